//! [`verify`]: re-reads every record of a layout and checks its checksum.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use crate::checksum::checksum;
use crate::error::{Error, ReadSite, Result};
use crate::layout::ExpertLayout;

/// Progress of [`verify`]: records and payload bytes checked so far, and the totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Records checked so far.
    pub records_done: u64,
    /// Records in the layout.
    pub records_total: u64,
    /// Payload bytes checked so far.
    pub bytes_done: u64,
    /// Payload bytes in the layout.
    pub bytes_total: u64,
}

/// Re-reads every record of `layout` (buffered I/O, one record at a time) and checks its
/// checksum, calling `progress` after each record. The first bad record is returned as
/// [`Error::Checksum`] or [`Error::Read`] naming layer, expert, file and offset.
pub fn verify(layout: &ExpertLayout, mut progress: impl FnMut(VerifyProgress)) -> Result<()> {
    // Bounds every record by its real file size before the buffer is sized by `len`.
    layout.validate_files()?;
    let mut files = Vec::with_capacity(layout.files().len());
    for p in layout.files() {
        files.push(File::open(p).map_err(|e| Error::file("open", p, e))?);
    }
    let mut p = VerifyProgress {
        records_done: 0,
        records_total: layout.num_layers() as u64 * layout.num_experts() as u64,
        bytes_done: 0,
        bytes_total: layout.total_expert_bytes(),
    };
    let mut buf = Vec::new();
    for (key, loc) in layout.iter() {
        let site = || ReadSite {
            layer: key.layer,
            expert: key.expert,
            file: layout.file_path(loc.file).to_path_buf(),
            offset: loc.offset,
        };
        buf.resize(loc.len as usize, 0);
        let f = &mut files[loc.file as usize];
        f.seek(SeekFrom::Start(loc.offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|source| Error::Read {
                site: site(),
                source,
            })?;
        let actual = checksum(&buf);
        if actual != loc.checksum {
            return Err(Error::Checksum {
                site: site(),
                expected: loc.checksum,
                actual,
            });
        }
        p.records_done += 1;
        p.bytes_done += loc.len;
        progress(p);
    }
    Ok(())
}
