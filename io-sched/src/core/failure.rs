//! A failed load, kept so that every waiter gets its own copy of the error.

use std::io;

use crate::error::{Error, ReadSite};

#[derive(Debug, Clone)]
pub(crate) enum FailureKind {
    Io {
        kind: io::ErrorKind,
        code: Option<i32>,
        message: String,
    },
    Checksum {
        expected: u64,
        actual: u64,
    },
}

/// Why a load failed, and where.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub site: ReadSite,
    pub kind: FailureKind,
}

impl Failure {
    pub fn io(site: ReadSite, err: &io::Error) -> Self {
        Self {
            site,
            kind: FailureKind::Io {
                kind: err.kind(),
                code: err.raw_os_error(),
                message: err.to_string(),
            },
        }
    }

    pub fn to_error(&self) -> Error {
        match &self.kind {
            FailureKind::Io {
                kind,
                code,
                message,
            } => Error::Read {
                site: self.site.clone(),
                source: match code {
                    Some(c) => io::Error::from_raw_os_error(*c),
                    None => io::Error::new(*kind, message.clone()),
                },
            },
            FailureKind::Checksum { expected, actual } => Error::Checksum {
                site: self.site.clone(),
                expected: *expected,
                actual: *actual,
            },
        }
    }
}
