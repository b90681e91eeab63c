//! Copying out of a memory-mapped file so that a failing page becomes an error, not `SIGBUS`.
//!
//! Touching a mapped page whose read fails (EIO), or that lies past the end of a file
//! truncated while mapped, raises `SIGBUS`: the process dies with no message. Every reader of
//! mapped expert or weight bytes that cannot trust the file therefore copies through
//! [`copy_out`] instead of dereferencing the mapping:
//!
//! - On Linux it asks the kernel to do the copy with `process_vm_readv` on our own process.
//!   The kernel faults the mapped pages in exactly as a load would (page cache, readahead, the
//!   mapping's own page tables: the "trust the OS" behaviour is kept), but a fault that would
//!   raise `SIGBUS` makes the call return `EFAULT` instead, which we turn into an
//!   [`io::Error`] naming the offset (and whether the file is now shorter).
//! - Where `process_vm_readv` is missing or refused (a seccomp filter, another OS) the same
//!   bytes are read with `pread` from the mapped file: the same page cache, no mapping fault.
//!
//! Why not a `SIGBUS` handler with `sigsetjmp`/`siglongjmp` around the copy: Rust has no
//! sound `setjmp` (a function that returns twice), a jump skips destructors, and a
//! process-wide handler would also swallow faults meant for other code (GPU drivers map
//! memory too). The kernel-side copy needs none of that and no `unsafe` beyond the syscall.

use std::fs::File;
use std::io;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `process_vm_readv` turned out to be unavailable (ENOSYS, EPERM): use `pread`.
#[cfg(target_os = "linux")]
static NO_VM_READV: AtomicBool = AtomicBool::new(false);

/// Copies `dst.len()` bytes at `offset` of `map` — a mapping of `file` from its offset 0 —
/// into `dst`. Fails with [`io::ErrorKind::UnexpectedEof`] when the file no longer holds them
/// (truncated while mapped), with the OS error (`EIO`) when the page cannot be read, and with
/// [`io::ErrorKind::InvalidInput`] when the range is not inside `map`; never with a signal.
pub fn copy_out(map: &[u8], offset: usize, dst: &mut [u8], file: &File) -> io::Result<()> {
    let end = offset
        .checked_add(dst.len())
        .filter(|&e| e <= map.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{} outside the mapping of {} bytes",
                    dst.len(),
                    map.len()
                ),
            )
        })?;
    let src = &map[offset..end];
    #[cfg(target_os = "linux")]
    if !NO_VM_READV.load(Ordering::Relaxed) {
        match vm_readv(src, dst) {
            Ok(()) => return Ok(()),
            Err(Fault::At(pos)) => return Err(explain(file, offset + pos, end)),
            Err(Fault::Unsupported) => NO_VM_READV.store(true, Ordering::Relaxed),
        }
    }
    pread_exact(file, offset as u64, dst, end)
}

/// Why the kernel copy stopped.
#[cfg(target_os = "linux")]
enum Fault {
    /// A page at this offset (from the start of the range) could not be read.
    At(usize),
    /// The call is not available here.
    Unsupported,
}

#[cfg(target_os = "linux")]
fn vm_readv(src: &[u8], dst: &mut [u8]) -> Result<(), Fault> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut done = 0;
    while done < dst.len() {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: dst.len() - done,
        };
        let remote = libc::iovec {
            iov_base: src[done..].as_ptr() as *mut libc::c_void,
            iov_len: src.len() - done,
        };
        // SAFETY: `local` describes the writable, exclusively borrowed rest of `dst`; `remote`
        // describes the rest of `src` in our own address space, which the kernel only reads
        // (a page that fails to fault in ends the call with EFAULT, it raises no signal).
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) | Some(libc::EPERM) => Err(Fault::Unsupported),
            _ => Err(Fault::At(done)),
        };
    }
    Ok(())
}

/// The error for a mapped byte at `pos` that could not be read, `end` being the end of the
/// wanted range: a truncation if the file is now shorter, else an I/O error.
fn explain(file: &File, pos: usize, end: usize) -> io::Error {
    match file.metadata() {
        Ok(m) if m.len() < end as u64 => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the file was truncated to {} bytes while mapped (bytes up to {end} wanted)",
                m.len()
            ),
        ),
        _ => io::Error::other(format!(
            "{} (a mapped page at byte {pos} could not be read)",
            io::Error::from_raw_os_error(libc::EIO)
        )),
    }
}

fn pread_exact(file: &File, offset: u64, dst: &mut [u8], end: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(dst, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            explain(file, offset as usize, end)
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_truncated_while_mapped_gives_an_error_not_sigbus() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // SAFETY: a read-only mapping of our own temporary file, read only through copy_out.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        let mut buf = vec![0u8; 4096];
        copy_out(&map, 4096, &mut buf, &f).unwrap();
        assert_eq!(buf, data[4096..8192]);
        f.set_len(4096).unwrap();
        let e = copy_out(&map, 8192, &mut buf, &f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        assert!(e.to_string().contains("truncated to 4096"), "{e}");
        copy_out(&map, 0, &mut buf, &f).unwrap();
        assert_eq!(buf, data[..4096]);
        let e = copy_out(&map, 3 * 4096, &mut buf, &f).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}
