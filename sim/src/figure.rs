//! A number in a preset together with where it came from.

use serde::{Deserialize, Serialize};

/// A preset figure: its value and its source (paper, README, datasheet, or the derivation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fig {
    pub value: f64,
    pub source: String,
}

impl Fig {
    /// A figure made in code (user overrides, calibration), with a note on its origin.
    pub fn new(value: f64, source: impl Into<String>) -> Self {
        Self {
            value,
            source: source.into(),
        }
    }
}
