//! Small helpers with no better home: the clock and the kernel's CSPRNG.

/// Seconds since the Unix epoch, saturated into the u32 the entry headers store (good to 2106).
pub fn now_unix() -> u32 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(u64::from(u32::MAX)) as u32,
        Err(_) => 0,
    }
}

/// Fill `buf` from getrandom(2). Falls back to /dev/urandom only if the syscall is missing.
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let n = unsafe {
            libc::getrandom(
                buf[filled..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - filled,
                0,
            )
        };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            use std::io::Read;
            if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
                if f.read_exact(&mut buf[filled..]).is_ok() {
                    return;
                }
            }
            panic!("no source of randomness available");
        }
    }
}

/// Zero a buffer that held secrets, in a way the optimiser does not remove.
pub fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: b is a valid, exclusive reference.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
