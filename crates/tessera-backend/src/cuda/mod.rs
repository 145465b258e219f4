//! The CUDA backend. PLACEHOLDER: being written (issue 6).
