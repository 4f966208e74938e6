//! Aspen's shared vocabulary (placeholder filled below).
