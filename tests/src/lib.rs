//! End-to-end suite (see issue 8).
