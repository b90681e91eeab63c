//! The packed-experts file format v1 (to be written).
