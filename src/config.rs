//! Flags, defaults and validation.
