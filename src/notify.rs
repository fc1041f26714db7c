//! systemd readiness notification (`Type=notify`): `READY=1` once the service answers,
//! `STOPPING=1` when it begins to shut down. A datagram to `$NOTIFY_SOCKET` (a path, or an
//! abstract socket written `@name`); nothing happens when the variable is unset.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells the service manager the service is ready.
pub fn ready() {
    send("READY=1\nSTATUS=answering queries");
}

/// Tells the service manager the service is stopping.
pub fn stopping() {
    send("STOPPING=1");
}

/// The address `$NOTIFY_SOCKET` names.
fn address(var: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = var.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        _ => SocketAddr::from_pathname(std::path::Path::new(var)),
    }
}

fn send(state: &str) {
    let Some(var) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = address(&var).and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, socket = ?var, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_both_understood() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        let addr = address(path.as_os_str()).expect("path");
        UnixDatagram::unbound()
            .expect("socket")
            .send_to_addr(b"READY=1", &addr)
            .expect("send");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let name = format!("@cleanpipe-notify-test-{}", std::process::id());
        let abs = address(std::ffi::OsStr::new(&name)).expect("abstract");
        use std::os::linux::net::SocketAddrExt;
        assert_eq!(abs.as_abstract_name(), Some(name.as_bytes()[1..].as_ref()));
    }
}
