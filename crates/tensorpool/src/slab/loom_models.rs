//! Loom models of the engine hand-offs (written below).
