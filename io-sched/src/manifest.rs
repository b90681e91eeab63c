//! The JSON manifest describing an [`crate::ExpertLayout`] (to be written).
