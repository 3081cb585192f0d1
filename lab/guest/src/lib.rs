//! Helpers shared by the lab tests that run inside the VM.
