//! Inspection of the dma-bufs in a system.
