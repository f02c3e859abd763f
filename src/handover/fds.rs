//! Passing descriptors between processes over a Unix stream socket (SCM_RIGHTS),
//! and the framing of the hand-over messages on it.
//!
//! A frame is a header sent by one `sendmsg` that carries the frame's descriptors,
//! then its payload by plain writes. The receiver reads exactly the header with one
//! `recvmsg`: Linux never merges the bytes of two `sendmsg` calls that carry
//! descriptors into one read, so the descriptors that arrive are the header's own.
//! Received descriptors are close-on-exec (MSG_CMSG_CLOEXEC): a later upgrade
//! passes them explicitly, never by leaking them into a child.
//!
//! Blocking I/O, only ever on the upgrade's own thread; it must never run on a
//! reactor or the dispatcher.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::format::{self, FormatError, Header, Kind, HEADER_LEN};

/// Most descriptors one message may carry (Linux's SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// A received frame.
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why a frame could not be sent or received.
#[derive(Debug)]
pub enum FrameError {
    Io(io::Error),
    Format(FormatError),
    /// The descriptors that came do not match what the header announced.
    Descriptors {
        announced: u16,
        received: usize,
    },
    /// The peer closed the socket.
    Closed,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Format(e) => write!(f, "{e}"),
            FrameError::Descriptors {
                announced,
                received,
            } => write!(
                f,
                "frame announced {announced} descriptors, {received} arrived"
            ),
            FrameError::Closed => write!(f, "the other process closed the upgrade socket"),
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        if matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
        ) {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    }
}

impl From<FormatError> for FrameError {
    fn from(e: FormatError) -> Self {
        FrameError::Format(e)
    }
}

/// Sends `bytes` with `fds` attached (at most `MAX_FDS`). The descriptors stay open
/// here: the receiver gets its own copies.
pub fn send_with_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one message",
        ));
    }
    let space = cmsg_space(fds.len());
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` writable, aligned bytes, enough for
        // one cmsghdr holding fds.len() descriptors (CMSG_SPACE), so CMSG_FIRSTHDR is
        // non-null and CMSG_DATA has room for the copy.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                std::mem::size_of_val(fds),
            );
        }
    }
    let sent = loop {
        // SAFETY: msg points at live buffers (iov, control) for the call's duration.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // The descriptors went with the first byte; the rest is plain data.
    let mut s = sock;
    s.write_all(&bytes[sent..])
}

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Reads exactly `buf.len()` bytes, collecting the descriptors that come with them.
pub fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), FrameError> {
    let space = cmsg_space(MAX_FDS);
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut got = 0;
    while got < buf.len() {
        let mut iov = libc::iovec {
            iov_base: buf[got..].as_mut_ptr().cast(),
            iov_len: buf.len() - got,
        };
        // SAFETY: as in send_with_fds; all-zero is an empty msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the buffers outlive the call; the kernel writes within their lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsghdrs;
        // the CMSG_* macros walk exactly those, and each SCM_RIGHTS payload holds
        // (cmsg_len - CMSG_LEN(0)) / 4 descriptors that are now ours.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let count = len / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(c).cast::<RawFd>();
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(FrameError::Io(io::Error::other(
                "descriptors were truncated (open-file limit reached?)",
            )));
        }
        if n == 0 {
            return Err(FrameError::Closed);
        }
        got += n as usize;
    }
    Ok(())
}

/// Sends one frame: header with its descriptors, then the payload.
pub fn send_frame(
    sock: &UnixStream,
    kind: Kind,
    payload: &[u8],
    fds: &[RawFd],
) -> Result<(), FrameError> {
    let header = format::encode_header(kind, fds.len() as u16, payload.len());
    send_with_fds(sock, &header, fds)?;
    let mut s = sock;
    s.write_all(payload)?;
    Ok(())
}

/// Receives one frame, checking its header and that the announced descriptors came.
pub fn recv_frame(sock: &UnixStream) -> Result<Frame, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    let mut fds = Vec::new();
    recv_with_fds(sock, &mut h, &mut fds)?;
    let Header { kind, fds: n, len } = format::decode_header(&h)?;
    if fds.len() != n as usize {
        return Err(FrameError::Descriptors {
            announced: n,
            received: fds.len(),
        });
    }
    let mut payload = vec![0u8; len as usize];
    let mut s = sock;
    s.read_exact(&mut payload)?;
    Ok(Frame { kind, payload, fds })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_the_socket_and_refer_to_the_same_file() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p1, p2) = UnixStream::pair().unwrap();
        // Send p2 (one end of another pair) across; writing into p1 must come out of
        // the received copy of p2.
        let fds: Vec<RawFd> = vec![p2.as_raw_fd(); MAX_FDS];
        send_frame(&a, Kind::Conns, b"payload", &fds).unwrap();
        send_frame(&a, Kind::End, b"", &[]).unwrap();
        let f = recv_frame(&b).unwrap();
        assert_eq!(f.kind, Kind::Conns);
        assert_eq!(f.payload, b"payload");
        assert_eq!(f.fds.len(), MAX_FDS);
        drop(p2);
        p1.write_all(b"x").unwrap();
        let mut got = UnixStream::from(f.fds[0].as_fd().try_clone_to_owned().unwrap());
        let mut one = [0u8; 1];
        got.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        let end = recv_frame(&b).unwrap();
        assert_eq!(end.kind, Kind::End);
        assert!(end.fds.is_empty());
    }

    #[test]
    fn a_closed_peer_is_reported_not_hung_on() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_frame(&b), Err(FrameError::Closed)));
    }

    #[test]
    fn garbage_on_the_socket_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(
            recv_frame(&b),
            Err(FrameError::Format(FormatError::BadMagic))
        ));
    }
}
