//! A pseudo-terminal pair in raw mode, standing in for a serial line in
//! the RTU tests and the Modbus benchmark.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pty pair in raw mode (no echo, no CR/LF translation) on both ends.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    pub slave_path: String,
}

pub fn open_pty() -> Pty {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the given ints; the null name,
    // termios and winsize pointers are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: a valid tty fd and a termios buffer to fill / read.
        unsafe {
            assert_eq!(libc::tcgetattr(fd.as_raw_fd(), termios.as_mut_ptr()), 0);
            let mut termios = termios.assume_init();
            libc::cfmakeraw(&mut termios);
            assert_eq!(libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &termios), 0);
        }
    }
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))
        .expect("the pty slave's path")
        .to_string_lossy()
        .into_owned();
    Pty {
        master,
        slave,
        slave_path,
    }
}
