//! V4L2 (`include/uapi/linux/videodev2.h`): the subset needed to capture into dma-bufs.
