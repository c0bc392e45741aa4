//! dns (being built).
