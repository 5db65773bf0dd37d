//! The Redis context (under construction).
