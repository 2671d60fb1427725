//! The ferromq server (being written).
