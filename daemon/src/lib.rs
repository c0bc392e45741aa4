//! shoal daemon library.
