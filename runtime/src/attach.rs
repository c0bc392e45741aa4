//! Attaching to a container's main process (`kubectl attach`, `kubectl run -i`).
//!
//! The shim listens on [`SOCKET`] in the container's state dir. Frames go both ways as
//! `tag: u8, len: u16 (big endian), payload`:
//! - shim → client: [`TAG_STDOUT`] and [`TAG_STDERR`], the live output as the log gets it (with a
//!   terminal, everything is stdout). A client that cannot keep up is disconnected: neither
//!   the container nor its log ever waits for an attached client.
//! - client → shim: [`TAG_STDIN`] (only for a container created with `open_stdin`),
//!   [`TAG_RESIZE`] (rows, columns: two u16) and [`TAG_CLOSE_STDIN`] (the client's input ended;
//!   with `stdin_once` the container's stdin is closed then, for good).
//!
//! The socket is reached through `/proc/self/fd/N/` of the state dir, so a long state path
//! never overflows `sun_path`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::logs::Stream;

/// The socket's name in the state dir.
pub const SOCKET: &str = "attach.sock";

const TAG_STDOUT: u8 = 1;
const TAG_STDERR: u8 = 2;
const TAG_STDIN: u8 = 3;
const TAG_RESIZE: u8 = 4;
const TAG_CLOSE_STDIN: u8 = 5;
const MAX_PAYLOAD: usize = u16::MAX as usize;

/// `dir` opened O_PATH, and the short path of [`SOCKET`] in it through /proc/self/fd (valid
/// while the returned file is open).
fn short_path(dir: &Path) -> io::Result<(File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let d = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH | libc::O_DIRECTORY).open(dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", d.as_raw_fd()));
    Ok((d, path))
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3 * (payload.len() / MAX_PAYLOAD + 1));
    for chunk in payload.chunks(MAX_PAYLOAD).chain(payload.is_empty().then_some(&[][..])) {
        out.push(tag);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// One frame; `None` at a clean end of stream.
fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 3];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; u16::from_be_bytes([head[1], head[2]]) as usize];
    r.read_exact(&mut body)?;
    Ok(Some((head[0], body)))
}

/// A client's connection to a container's [`SOCKET`].
pub struct Attach {
    sock: UnixStream,
}

impl Attach {
    /// Connects to the shim of the container whose state dir is `dir`.
    pub fn connect(dir: &Path) -> io::Result<Attach> {
        let (_dir, path) = short_path(dir)?;
        Ok(Attach { sock: UnixStream::connect(path)? })
    }

    pub fn try_clone(&self) -> io::Result<Attach> {
        Ok(Attach { sock: self.sock.try_clone()? })
    }

    /// The next piece of output; `None` once the container has ended (or the shim dropped this
    /// client).
    pub fn read_output(&mut self) -> io::Result<Option<(Stream, Vec<u8>)>> {
        loop {
            match read_frame(&mut self.sock)? {
                None => return Ok(None),
                Some((TAG_STDOUT, b)) => return Ok(Some((Stream::Stdout, b))),
                Some((TAG_STDERR, b)) => return Ok(Some((Stream::Stderr, b))),
                Some(_) => continue,
            }
        }
    }

    pub fn write_stdin(&mut self, data: &[u8]) -> io::Result<()> {
        self.sock.write_all(&frame(TAG_STDIN, data))
    }

    /// The client's input ended.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        self.sock.write_all(&frame(TAG_CLOSE_STDIN, &[]))
    }

    pub fn resize(&mut self, rows: u16, cols: u16) -> io::Result<()> {
        let mut b = rows.to_be_bytes().to_vec();
        b.extend_from_slice(&cols.to_be_bytes());
        self.sock.write_all(&frame(TAG_RESIZE, &b))
    }

    /// Ends the connection both ways (a reader blocked in [`Attach::read_output`] returns).
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// The shim's side: the attached clients that get the output.
#[derive(Clone, Default)]
pub(crate) struct Clients(Arc<Mutex<Vec<UnixStream>>>);

impl Clients {
    /// Sends output to every attached client without blocking; one whose socket is full or
    /// gone is dropped.
    pub(crate) fn send(&self, stream: Stream, data: &[u8]) {
        let Ok(mut clients) = self.0.lock() else { return };
        if clients.is_empty() {
            return;
        }
        let tag = if stream == Stream::Stderr { TAG_STDERR } else { TAG_STDOUT };
        let bytes = frame(tag, data);
        clients.retain(|c| {
            let sent = send_all_nonblocking(c, &bytes);
            if !sent {
                // Ended both ways, so the client sees the end (not half a frame and silence)
                // and its input thread returns.
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            sent
        });
    }
}

fn send_all_nonblocking(sock: &UnixStream, mut bytes: &[u8]) -> bool {
    use nix::sys::socket::{send, MsgFlags};
    while !bytes.is_empty() {
        match send(sock.as_raw_fd(), bytes, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// What the shim's attach server writes input to.
pub(crate) struct Input {
    /// The container's stdin: the write end of its stdin pipe, or the terminal's master end.
    /// `None` when the container was created without `open_stdin`, and once closed.
    pub stdin: Option<OwnedFd>,
    /// The terminal's master end, for resizes.
    pub terminal: Option<OwnedFd>,
    pub stdin_once: bool,
}

/// The shim's attach server: the listening socket, polled by the shim's main loop (no thread
/// runs until a client connects), the attached clients and where their input goes.
pub(crate) struct Server {
    listener: UnixListener,
    pub(crate) clients: Clients,
    stdin: Arc<Mutex<Option<File>>>,
    terminal: Option<OwnedFd>,
    stdin_once: bool,
}

impl Server {
    /// Listens on [`SOCKET`] in the container's state dir `dir`.
    pub(crate) fn bind(dir: &Path, input: Input) -> io::Result<Server> {
        let (_dir, path) = short_path(dir)?;
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            listener,
            clients: Clients::default(),
            stdin: Arc::new(Mutex::new(input.stdin.map(File::from))),
            terminal: input.terminal,
            stdin_once: input.stdin_once,
        })
    }

    /// The listening socket, for poll.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }

    /// Takes the clients waiting on the socket: each gets the output from now on, and a thread
    /// that applies its input until it ends.
    pub(crate) fn accept(&self) {
        while let Ok((conn, _)) = self.listener.accept() {
            if conn.set_nonblocking(false).is_err() {
                continue;
            }
            let Ok(out) = conn.try_clone() else { continue };
            if let Ok(mut c) = self.clients.0.lock() {
                c.push(out);
            }
            let stdin = self.stdin.clone();
            let terminal = self.terminal.as_ref().and_then(|t| t.try_clone().ok());
            let once = self.stdin_once;
            std::thread::spawn(move || client_input(conn, &stdin, terminal, once));
        }
    }
}

/// Applies one client's input until it ends.
fn client_input(mut conn: UnixStream, stdin: &Mutex<Option<File>>, terminal: Option<OwnedFd>, stdin_once: bool) {
    loop {
        match read_frame(&mut conn) {
            Ok(Some((TAG_STDIN, data))) => {
                // Written outside the lock would race a close; a full pipe blocks only this
                // client's thread.
                let Ok(mut guard) = stdin.lock() else { return };
                if let Some(f) = guard.as_mut() {
                    if f.write_all(&data).is_err() {
                        *guard = None;
                    }
                }
            }
            Ok(Some((TAG_RESIZE, b))) if b.len() == 4 => {
                if let Some(t) = &terminal {
                    let ws = libc::winsize {
                        ws_row: u16::from_be_bytes([b[0], b[1]]),
                        ws_col: u16::from_be_bytes([b[2], b[3]]),
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
                    unsafe { libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            Ok(Some((TAG_CLOSE_STDIN, _))) | Ok(None) | Err(_) => break,
            Ok(Some(_)) => {}
        }
    }
    if stdin_once {
        if let Ok(mut guard) = stdin.lock() {
            *guard = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_long_payloads_and_round_trip() {
        let long = vec![7u8; MAX_PAYLOAD + 10];
        let bytes = frame(TAG_STDOUT, &long);
        let mut r = &bytes[..];
        let (t1, a) = read_frame(&mut r).unwrap().unwrap();
        let (t2, b) = read_frame(&mut r).unwrap().unwrap();
        assert_eq!((t1, t2, a.len(), b.len()), (TAG_STDOUT, TAG_STDOUT, MAX_PAYLOAD, 10));
        assert!(read_frame(&mut r).unwrap().is_none());
        let empty = frame(TAG_CLOSE_STDIN, &[]);
        assert_eq!(read_frame(&mut &empty[..]).unwrap(), Some((TAG_CLOSE_STDIN, vec![])));
    }

    #[test]
    fn a_truncated_frame_is_an_error_not_a_hang() {
        let mut bytes = frame(TAG_STDIN, b"hello");
        bytes.truncate(5);
        assert!(read_frame(&mut &bytes[..]).is_err());
    }
}
