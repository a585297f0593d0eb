//! The dataset config of SPEC §3 (being written).
