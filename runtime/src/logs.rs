//! Container logs in the CRI format (`2016-10-06T00:17:09.669794202Z stdout F message`), rotated
//! by size.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest line kept whole; longer lines are split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

/// Which stream a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes CRI log records to a file, rotating it to `FILE.1`, `FILE.2`, ... when it grows past
/// `max_size`; at most `max_files` files are kept, the live one included.
pub(crate) struct CriLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    max_files: u32,
    pending: [Vec<u8>; 2],
}

impl CriLog {
    pub(crate) fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<CriLog> {
        if let Some(parent) = path.parent() {
            // Root only: what a container prints may be a secret.
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        let size = file.metadata()?.len();
        Ok(CriLog {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            max_size: max_size.max(1024),
            max_files: max_files.max(1),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Appends raw output of one stream; complete lines are written at once, the rest is kept
    /// until its newline arrives (or it grows past the line limit).
    pub(crate) fn write(&mut self, stream: Stream, data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        let mut buf = std::mem::take(&mut self.pending[idx]);
        buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &buf[start..start + pos];
            while line.len() > MAX_LINE {
                self.record(stream, b'P', &line[..MAX_LINE])?;
                line = &line[MAX_LINE..];
            }
            self.record(stream, b'F', line)?;
            start += pos + 1;
        }
        while buf.len() - start > MAX_LINE {
            let chunk = &buf[start..start + MAX_LINE];
            self.record(stream, b'P', chunk)?;
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.pending[idx] = buf;
        Ok(())
    }

    /// Writes whatever is left without a newline as full records (at the end of the output).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = std::mem::take(&mut self.pending[stream as usize]);
            if !buf.is_empty() {
                self.record(stream, b'F', &buf)?;
            }
        }
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, tag: u8, line: &[u8]) -> io::Result<()> {
        let mut rec = Vec::with_capacity(line.len() + 48);
        rec.extend_from_slice(rfc3339_nanos(SystemTime::now()).as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.name().as_bytes());
        rec.push(b' ');
        rec.push(tag);
        rec.push(b' ');
        rec.extend_from_slice(line);
        rec.push(b'\n');
        if self.size > 0 && self.size + rec.len() as u64 > self.max_size {
            self.rotate()?;
        }
        let file = match self.file.as_mut() {
            Some(f) => f,
            None => return Ok(()),
        };
        file.write_all(&rec)?;
        self.size += rec.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let name = |n: u32| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.max_files <= 1 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            std::fs::remove_file(name(self.max_files - 1)).or_else(ignore_missing)?;
            for n in (1..self.max_files - 1).rev() {
                std::fs::rename(name(n), name(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, name(1)).or_else(ignore_missing)?;
        }
        self.file = Some(OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// `2016-10-06T00:17:09.669794202Z` for a time (UTC).
pub(crate) fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, (rem / 60) % 60, rem % 60, d.subsec_nanos())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps_like_cri() {
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
        assert_eq!(rfc3339_nanos(t), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(rfc3339_nanos(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn logs_are_root_only_even_after_rotation() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns_pod_uid/web/0.log");
        let mut log = CriLog::open(&path, 1024, 3).unwrap();
        for _ in 0..4 {
            log.write(Stream::Stdout, &[[b'x'; 600].as_slice(), b"\n"].concat()).unwrap();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&path.with_extension("log.1")), 0o600);
        assert_eq!(mode(&dir.path().join("ns_pod_uid")), 0o700);
        assert_eq!(mode(&dir.path().join("ns_pod_uid/web")), 0o700);
    }

    #[test]
    fn splits_lines_and_keeps_partial_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 1 << 20, 2).unwrap();
        log.write(Stream::Stdout, b"hel").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"lo\nwor").unwrap();
        log.flush().unwrap();
        assert_eq!(lines(&path), vec!["stderr F oops", "stdout F hello", "stdout F wor"]);
    }

    #[test]
    fn long_lines_become_partial_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 1 << 20, 2).unwrap();
        let mut data = vec![b'a'; MAX_LINE + 10];
        data.push(b'\n');
        log.write(Stream::Stdout, &data).unwrap();
        let got = lines(&path);
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("stdout P aaa"));
        assert_eq!(got[1], format!("stdout F {}", "a".repeat(10)));
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path, 1024, 3).unwrap();
        for i in 0..200 {
            log.write(Stream::Stdout, format!("line {i}\n").as_bytes()).unwrap();
        }
        log.flush().unwrap();
        assert!(path.exists());
        assert!(dir.path().join("0.log.1").exists());
        assert!(dir.path().join("0.log.2").exists());
        assert!(!dir.path().join("0.log.3").exists());
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert_eq!(lines(&path).last().map(String::as_str), Some("stdout F line 199"));
    }
}
