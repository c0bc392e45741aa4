//! `pods/log` for the pods of this node, read from the shims' CRI log files
//! (`<time> <stream> <P|F> <message>`): tail, timestamps, previous instance and follow.
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::streams::{ByteStream, LogOptions, PodStreams, StreamError};

#[derive(Clone)]
pub(crate) struct LocalLogs {
    pub log_dir: PathBuf,
}

/// Turns CRI log lines into what `kubectl logs` prints.
pub fn render(text: &str, timestamps: bool) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag), msg) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if timestamps {
            out.push_str(ts);
            out.push(' ');
        }
        out.push_str(msg.unwrap_or(""));
        if tag != "P" {
            out.push('\n');
        }
    }
    out
}

fn restart_files(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut files: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    files.sort();
    files
}

impl PodStreams for LocalLogs {
    fn logs(&self, pod: &Value, opts: LogOptions) -> BoxFuture<'static, Result<ByteStream, StreamError>> {
        let m = &pod["metadata"];
        let pod_name = m["name"].as_str().unwrap_or_default().to_string();
        let container = opts
            .container
            .clone()
            .or_else(|| pod["spec"]["containers"][0]["name"].as_str().map(String::from))
            .unwrap_or_default();
        let valid = super::streams::all_containers(pod).any(|c| c["name"].as_str() == Some(container.as_str()));
        let dir = self
            .log_dir
            .join(format!(
                "{}_{}_{}",
                m["namespace"].as_str().unwrap_or("default"),
                pod_name,
                m["uid"].as_str().unwrap_or("")
            ))
            .join(&container);
        Box::pin(async move {
            if !valid {
                return Err(StreamError::ContainerNotFound { pod: pod_name, container });
            }
            let files = restart_files(&dir);
            let pick = if opts.previous { files.len().checked_sub(2) } else { files.len().checked_sub(1) };
            let Some(path) = pick.and_then(|i| files.get(i)).map(|(_, p)| p.clone()) else {
                let reason = if opts.previous { "no previous instance" } else { "ContainerCreating" };
                return Err(StreamError::NotStarted { pod: pod_name, container, reason: reason.into() });
            };
            let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
            let mut rendered = render(&text, opts.timestamps);
            if let Some(n) = opts.tail_lines.filter(|n| *n >= 0) {
                let lines: Vec<&str> = rendered.lines().collect();
                let start = lines.len().saturating_sub(n as usize);
                rendered = lines[start..].iter().map(|l| format!("{l}\n")).collect();
            }
            // `--limit-bytes` counts everything sent, followed lines included.
            let mut left = opts.limit_bytes.filter(|l| *l >= 0).map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            if let Some(limit) = left {
                left = Some(cut_at_char_boundary(&mut rendered, limit));
            }
            let first = futures::stream::once(async move { Ok(Bytes::from(rendered)) });
            if !opts.follow || opts.previous || left == Some(0) {
                return Ok(Box::pin(first) as ByteStream);
            }
            // Follow: poll the file for appended lines (the shim appends; rotation starts a new
            // file, which ends this stream as kubectl expects on restart).
            let offset = text.len() as u64;
            let timestamps = opts.timestamps;
            let rest = futures::stream::unfold(
                (path, offset, String::new(), left),
                move |(path, mut offset, mut partial, left)| async move {
                    if left == Some(0) {
                        return None;
                    }
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let meta = tokio::fs::metadata(&path).await.ok()?;
                        if meta.len() < offset {
                            return None;
                        }
                        if meta.len() == offset {
                            continue;
                        }
                        let bytes = tokio::fs::read(&path).await.ok()?;
                        let new = String::from_utf8_lossy(&bytes[offset as usize..]).into_owned();
                        offset = bytes.len() as u64;
                        partial.push_str(&new);
                        let cut = partial.rfind('\n').map(|i| i + 1).unwrap_or(0);
                        let complete: String = partial.drain(..cut).collect();
                        if complete.is_empty() {
                            continue;
                        }
                        let mut out = render(&complete, timestamps);
                        let left = left.map(|l| cut_at_char_boundary(&mut out, l));
                        return Some((Ok(Bytes::from(out)), (path, offset, partial, left)));
                    }
                },
            );
            Ok(Box::pin(futures::StreamExt::chain(first, rest)) as ByteStream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_render_like_kubectl() {
        let text = "2024-01-01T00:00:00.000000001Z stdout F started\n2024-01-01T00:00:01Z stderr P par\n2024-01-01T00:00:01Z stderr F tial\n";
        assert_eq!(render(text, false), "started\npartial\n");
        assert!(render(text, true).starts_with("2024-01-01T00:00:00.000000001Z started\n"));
        assert_eq!(render("garbage\n", false), "");
    }
}

/// Cuts `s` to at most `limit` bytes, at the last character boundary at or before it
/// (`String::truncate` panics inside a multi-byte character); returns what is left of the limit
/// for what follows: 0 once anything was cut, so a stream ends there.
fn cut_at_char_boundary(s: &mut String, limit: usize) -> usize {
    if limit >= s.len() {
        return limit - s.len();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    0
}

#[cfg(test)]
mod limit_bytes_tests {
    use super::cut_at_char_boundary;

    #[test]
    fn limit_bytes_cuts_on_a_character_boundary() {
        for limit in 0..12 {
            let mut s = "aé€😀z".to_string();
            cut_at_char_boundary(&mut s, limit);
            assert!(s.len() <= limit && "aé€😀z".starts_with(&s), "{limit}: {s:?}");
        }
        let mut s = "€".to_string();
        cut_at_char_boundary(&mut s, 2);
        assert_eq!(s, "");
        let mut s = "ab".to_string();
        assert_eq!(cut_at_char_boundary(&mut s, 99), 97, "what is left for followed lines");
        assert_eq!(s, "ab");
        // A cut inside a character leaves nothing for what follows (the stream ends).
        let mut s = "a€".to_string();
        assert_eq!(cut_at_char_boundary(&mut s, 3), 0);
        assert_eq!(s, "a");
    }
}

#[cfg(test)]
mod follow_limit_tests {
    use std::time::Duration;

    use futures::StreamExt;
    use serde_json::json;

    use super::LocalLogs;
    use crate::streams::{LogOptions, PodStreams};

    /// `kubectl logs -f --limit-bytes N` stops after N bytes in all, followed lines included.
    #[tokio::test]
    async fn limit_bytes_counts_followed_lines_and_ends_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let logs_dir = dir.path().join("default_p_u1").join("c");
        std::fs::create_dir_all(&logs_dir).unwrap();
        let file = logs_dir.join("0.log");
        std::fs::write(&file, "2024-01-01T00:00:00Z stdout F hello\n").unwrap();
        let pod = json!({"metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c"}]}});
        let logs = LocalLogs { log_dir: dir.path().to_path_buf() };
        let opts = LogOptions { follow: true, limit_bytes: Some(10), ..LogOptions::default() };
        let mut stream = logs.logs(&pod, opts).await.expect("stream");
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(&first[..], b"hello\n");
        std::fs::write(&file, "2024-01-01T00:00:00Z stdout F hello\n2024-01-01T00:00:01Z stdout F world\n").unwrap();
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(c) = stream.next().await {
                rest.extend_from_slice(&c.unwrap());
            }
        })
        .await;
        assert!(end.is_ok(), "the stream did not end at the limit");
        assert_eq!(rest, b"worl");
    }
}
