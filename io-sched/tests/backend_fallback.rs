//! Fallbacks: io_uring disabled by config, files that refuse direct I/O (at open and at the
//! first aligned read), and buffer registration failing with the real `ENOMEM` of the memlock
//! limit once `CAP_IPC_LOCK` is dropped.

mod backend_common;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend_common::{Arena, Fixture, read_all_and_check};
use io_sched::backend::fallback::Fallback;
use io_sched::backend::files::{DirectMode, OpenFiles, probe_aligned_read};
use io_sched::backend::pread::PreadBackend;
use io_sched::backend::select::{BackendConfig, open_backend};
use io_sched::backend::{BackendKind, ReadBackend, ReadOp};

#[test]
fn io_uring_disabled_by_config_falls_back_to_pread_with_reason() {
    let fx = Fixture::new(None, 2, 8, 64 << 10, 1);
    let cfg = BackendConfig::default().allow_io_uring(false);
    let mut opened = open_backend(&fx.layout, &cfg).unwrap();
    assert_eq!(opened.backend.kind(), BackendKind::Pread);
    if cfg!(target_os = "linux") {
        assert!(
            opened
                .fallbacks
                .iter()
                .any(|r| matches!(r, Fallback::Pread { .. })
                    && r.reason().contains("io_uring disabled")),
            "{:?}",
            opened.fallbacks
        );
    }
    let arena = Arena::new(&fx.layout);
    read_all_and_check(opened.backend.as_mut(), &arena, 8, 1);

    // Forcing io_uring while forbidding it is an error, not a silent fallback.
    let forced = BackendConfig::default()
        .kind(Some(BackendKind::IoUring))
        .allow_io_uring(false);
    let e = open_backend(&fx.layout, &forced).unwrap_err().to_string();
    assert!(e.contains("io_uring"), "{e}");
}

#[test]
fn tmpfs_direct_io_is_used_or_refused_with_a_reason() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        println!("skipped: no /dev/shm");
        return;
    }
    let fx = Fixture::new(Some(shm), 2, 8, 64 << 10, 2);
    let files = OpenFiles::open(&fx.layout, DirectMode::Auto).unwrap();
    if files.all_direct() {
        // Linux >= 6.6 tmpfs supports O_DIRECT: nothing to fall back from.
        println!("tmpfs accepts O_DIRECT on this kernel: no fallback");
        assert!(files.fallbacks().is_empty());
    } else {
        println!("tmpfs refuses O_DIRECT: {:?}", files.fallbacks());
        let r = &files.fallbacks()[0];
        assert!(r.contains(&fx.path.display().to_string()), "{r}");
    }
    let mut b = PreadBackend::new(Arc::new(files), 4).unwrap();
    let arena = Arena::new(&fx.layout);
    read_all_and_check(&mut b, &arena, 4, 1);
}

/// procfs refuses `O_DIRECT` at open with `EINVAL` (no `FMODE_CAN_ODIRECT`): a real
/// filesystem that refuses, exercising the "open fails" branch end to end.
#[test]
fn procfs_refuses_direct_at_open_and_falls_back_to_buffered() {
    let path = PathBuf::from("/proc/version");
    let Ok(expected) = std::fs::read(&path) else {
        println!("skipped: no /proc/version");
        return;
    };
    let files = OpenFiles::open_paths(
        std::slice::from_ref(&path),
        DirectMode::Auto,
        probe_aligned_read,
    )
    .unwrap();
    if files.all_direct() {
        println!("skipped: this procfs accepts O_DIRECT");
        return;
    }
    let reason = &files.fallbacks()[0];
    assert!(reason.contains("/proc/version"), "{reason}");
    assert!(reason.contains("os error 22"), "{reason}");
    assert!(reason.contains("open"), "{reason}");

    // Require turns the refusal into an error naming the file.
    let e = OpenFiles::open_paths(
        std::slice::from_ref(&path),
        DirectMode::Require,
        probe_aligned_read,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/proc/version"), "{e}");

    // The buffered file reads the same bytes as std::fs::read.
    let mut b = PreadBackend::new(Arc::new(files), 1).unwrap();
    assert!(!b.direct());
    let buf = backend_common::AlignedBuf::new(4096);
    let op = ReadOp {
        tag: 5,
        file: 0,
        offset: 0,
        len: 4096,
        buf: buf.ptr(),
    };
    // SAFETY: `buf` holds 4096 bytes and outlives `b`.
    unsafe { b.submit(op) }.unwrap();
    let c = backend_common::reap_n(&mut b, 1).remove(0);
    let n = c.result.unwrap();
    assert_eq!(buf.slice(0, n), &expected[..n]);
}

/// The "open succeeds, aligned read fails with EINVAL" branch, through the documented
/// injection point of `OpenFiles::open_paths` (every local filesystem here accepts O_DIRECT).
#[test]
fn probe_refusal_reopens_buffered_with_reason() {
    fn refuse(_: &File, _: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
    let fx = Fixture::new(None, 2, 8, 64 << 10, 3);
    let files = OpenFiles::open_paths(fx.layout.files(), DirectMode::Auto, refuse).unwrap();
    assert!(!files.all_direct());
    let reason = &files.fallbacks()[0];
    assert!(reason.contains("aligned probe read"), "{reason}");
    assert!(reason.contains(&fx.path.display().to_string()), "{reason}");
    assert!(
        OpenFiles::open_paths(fx.layout.files(), DirectMode::Require, refuse).is_err(),
        "Require must fail"
    );
    let mut b = PreadBackend::new(Arc::new(files), 4).unwrap();
    let arena = Arena::new(&fx.layout);
    read_all_and_check(&mut b, &arena, 4, 1);

    // Any other probe error is fatal, not a fallback.
    fn eio(_: &File, _: &Path) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }
    assert!(OpenFiles::open_paths(fx.layout.files(), DirectMode::Auto, eio).is_err());
}

#[cfg(target_os = "linux")]
mod memlock {
    use super::*;
    use io_sched::backend::uring::{RegisterBuffers, UringBackend, UringConfig};

    const CAP_IPC_LOCK: u32 = 14;
    const CAP_V3: u32 = 0x2008_0522;

    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// Drops CAP_IPC_LOCK from the effective set of the calling thread only.
    fn drop_ipc_lock_in_this_thread() -> io::Result<()> {
        let mut hdr = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: capget writes two CapData (version 3) for the calling thread (pid 0).
        if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        data[0].effective &= !(1 << CAP_IPC_LOCK);
        // SAFETY: capset reads the header and two CapData; it changes this thread only.
        if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn memlock_limit() -> u64 {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into a live local.
        unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        lim.rlim_cur
    }

    #[test]
    fn registration_enomem_falls_back_to_plain_reads() {
        if !backend_common::is_root() {
            println!("skipped: not root, so CAP_IPC_LOCK cannot be dropped to reach ENOMEM");
            return;
        }
        let limit = memlock_limit();
        if limit == libc::RLIM_INFINITY || limit >= 64 << 20 {
            println!("skipped: RLIMIT_MEMLOCK ({limit}) would let 64 MiB register");
            return;
        }
        // 4 layers x 16 experts x ~1 MiB: an arena of about 64 MiB, above the 8 MiB limit.
        let fx = Fixture::new(None, 4, 16, 2 << 20, 11);
        let layout = fx.layout.clone();
        let result = std::thread::spawn(move || -> Result<(), String> {
            drop_ipc_lock_in_this_thread().map_err(|e| format!("capset: {e}"))?;
            let arena = Arena::new(&layout);
            let len = arena.buf.len();
            assert!(
                len > 32 << 20,
                "arena of {len} bytes is too small for the test"
            );
            let files = Arc::new(OpenFiles::open(&layout, DirectMode::Auto).unwrap());

            // Require: the real error comes back.
            let cfg = |register_buffers| UringConfig {
                queue_depth: 16,
                register_buffers,
            };
            let mut strict = UringBackend::new(files.clone(), cfg(RegisterBuffers::Require))
                .map_err(|e| e.to_string())?;
            // SAFETY: `arena` outlives `strict`.
            let e = unsafe { strict.register_memory(arena.buf.ptr(), len) }.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOMEM), "{e}");
            drop(strict);

            // Auto: falls back to plain reads, says why, and still reads right.
            let mut b =
                UringBackend::new(files, cfg(RegisterBuffers::Auto)).map_err(|e| e.to_string())?;
            // SAFETY: `arena` outlives `b`.
            let registered = unsafe { b.register_memory(arena.buf.ptr(), len) }.unwrap();
            assert!(!registered);
            assert!(!b.buffers_registered());
            let reason = b.fallbacks().join("\n");
            println!("fallback: {reason}");
            assert!(reason.contains("registration"), "{reason}");
            assert!(reason.contains("os error 12"), "{reason}");
            assert!(b.describe().contains("unregistered"), "{}", b.describe());
            read_all_and_check(&mut b, &arena, 16, 2);
            drop(b);
            Ok(())
        })
        .join()
        .expect("test thread panicked");
        result.unwrap();
    }
}

/// io_uring made unavailable for real, in one thread only: a seccomp filter makes
/// `io_uring_setup` fail with `EPERM` (as container policies do) or `ENOSYS` (as kernels built
/// without it do). The automatic choice falls back to pread with a reason; a forced io_uring
/// is an error.
#[cfg(target_os = "linux")]
mod unavailable {
    use super::*;

    /// Installs a filter on the calling thread: `io_uring_setup` fails with `errno`.
    fn deny_io_uring_setup_in_this_thread(errno: i32) -> io::Result<()> {
        const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
        const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET_K: u16 = 0x06; // BPF_RET | BPF_K
        let stmt = |code, k| libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        };
        let filter = [
            // seccomp_data.nr is at offset 0.
            stmt(LD_W_ABS, 0),
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            stmt(RET_K, libc::SECCOMP_RET_ERRNO | errno as u32),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with integer arguments; affects the calling thread only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `prog` points at `filter`, both live across the call; the kernel copies the
        // program. Without SECCOMP_FILTER_FLAG_TSYNC it applies to this thread only.
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn check(errno: i32, expect: &'static str) {
        let fx = Fixture::new(None, 2, 8, 64 << 10, 4);
        let layout = fx.layout.clone();
        let r = std::thread::spawn(move || -> Result<(), String> {
            deny_io_uring_setup_in_this_thread(errno).map_err(|e| format!("seccomp: {e}"))?;
            let mut opened = open_backend(&layout, &BackendConfig::default()).unwrap();
            assert_eq!(opened.backend.kind(), BackendKind::Pread);
            let reason = opened
                .fallbacks
                .iter()
                .map(|f| f.reason())
                .collect::<Vec<_>>()
                .join("\n");
            println!("fallback: {reason}");
            assert!(reason.contains("io_uring_setup failed"), "{reason}");
            assert!(reason.contains(expect), "{reason}");
            assert!(reason.contains("using pread"), "{reason}");
            let arena = Arena::new(&layout);
            read_all_and_check(opened.backend.as_mut(), &arena, 8, 1);

            let forced = BackendConfig::default().kind(Some(BackendKind::IoUring));
            let e = open_backend(&layout, &forced).unwrap_err().to_string();
            assert!(e.contains("io_uring_setup failed"), "{e}");
            Ok(())
        })
        .join()
        .expect("test thread panicked");
        if let Err(why) = r {
            println!("skipped: {why}");
        }
    }

    #[test]
    fn io_uring_denied_with_eperm_falls_back_to_pread() {
        check(libc::EPERM, "not permitted");
    }

    #[test]
    fn io_uring_missing_with_enosys_falls_back_to_pread() {
        check(libc::ENOSYS, "has no io_uring");
    }
}
