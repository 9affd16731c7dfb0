/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * /dev/microvisor: the ioctl interface of the microvisor's Dom0 kernel module.
 *
 * KEEP IN SYNC with shared_abi::control::ioctl (shared-abi/src/control.rs):
 * struct mv_control is IoctlControl, MV_IOCTL_CONTROL is IOCTL_CONTROL
 * (0xc0284d01), MV_CONTROL_HYPERCALL is CONTROL_HYPERCALL, MV_MAX_BUFFER is
 * MAX_BUFFER. Both sides assert the struct's size and the ioctl number.
 *
 * Usable from the kernel module and from userspace C (only <linux/types.h> and
 * <linux/ioctl.h> are needed).
 */
#ifndef MICROVISOR_UAPI_H
#define MICROVISOR_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* The control hypercall's number (RAX), outside Xen's numbering. */
#define MV_CONTROL_HYPERCALL 0x4d560000UL

/* Largest buffer one control call accepts. */
#define MV_MAX_BUFFER 4096u

/*
 * Argument of MV_IOCTL_CONTROL. 40 bytes, no padding, the same layout for 32-
 * and 64-bit callers (though the module serves 64-bit callers only).
 */
struct mv_control {
	__u64 op;	/* control operation (RDI) */
	__u64 arg;	/* operation argument (R10) */
	__u64 version;	/* control ABI version the caller was built for (R8) */
	__u64 buf;	/* user pointer to the buffer */
	__u32 buf_len;	/* buffer length, at most MV_MAX_BUFFER (RDX) */
	__u32 reserved;	/* must be zero */
};

/*
 * Copy buf_len bytes from buf into a zeroed kernel page, issue the control
 * hypercall on it, copy the page back into buf on success, and return the
 * hypercall's non-negative result. A failed hypercall returns -1 with errno
 * set to its error (the microvisor's errno numbers equal Linux's).
 */
#define MV_IOCTL_TYPE 'M'
#define MV_IOCTL_CONTROL _IOWR(MV_IOCTL_TYPE, 1, struct mv_control)

_Static_assert(sizeof(struct mv_control) == 40,
	       "struct mv_control must match shared_abi IoctlControl (40 bytes)");
_Static_assert(MV_IOCTL_CONTROL == 0xc0284d01u,
	       "MV_IOCTL_CONTROL must match shared_abi IOCTL_CONTROL");

#endif /* MICROVISOR_UAPI_H */
