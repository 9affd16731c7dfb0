/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * /dev/microvisor: the interface of the microvisor's Dom0 kernel module.
 *
 * KEEP IN SYNC with shared_abi::control (shared-abi/src/control.rs):
 * - struct mv_control is ioctl::IoctlControl, MV_IOCTL_CONTROL is
 *   IOCTL_CONTROL (0xc0284d01), MV_CONTROL_HYPERCALL is CONTROL_HYPERCALL,
 *   MV_MAX_BUFFER is MAX_BUFFER, MV_CONTROL_VERSION is CONTROL_VERSION;
 * - MV_OP_* are ControlOp, struct mv_host_info is HostInfo (96 bytes),
 *   struct mv_foreign_map_request is ForeignMapRequest (16 bytes),
 *   struct mv_domain_create is DomainCreateRequest (48 bytes), struct
 *   mv_vcpu_entry is VcpuEntry (16 bytes);
 * - MV_EVENT_* are EVENT_DOMAIN_STATE, EVENT_VENDOR_ID, EVENT_DEVICE_ID.
 * Both sides assert the structures' sizes and the ioctl number.
 *
 * Usable from the kernel module and from userspace C (only <linux/types.h> and
 * <linux/ioctl.h> are needed).
 *
 * What the device offers (details in README.md):
 * - ioctl(MV_IOCTL_CONTROL): one control hypercall;
 * - read(): blocks until an event arrives, then returns the 8-byte event mask
 *   (little-endian __u64 of MV_EVENT_* bits) gathered since the last read of
 *   this open file; poll() reports EPOLLIN while one is pending;
 * - mmap(): MAP_SHARED only, offset = first foreign-window slot * MV_SLOT_SIZE;
 *   maps foreign-window slots (filled with MV_OP_FOREIGN_MAP) into the caller.
 */
#ifndef MICROVISOR_UAPI_H
#define MICROVISOR_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* The control hypercall's number (RAX), outside Xen's numbering. */
#define MV_CONTROL_HYPERCALL 0x4d560000UL

/* Version of the control structures (R8 of every call). */
#define MV_CONTROL_VERSION 1u

/* Largest buffer one control call accepts. */
#define MV_MAX_BUFFER 4096u

/* Control operations (RDI, mv_control.op). */
#define MV_OP_HOST_INFO 1u	/* out: struct mv_host_info */
#define MV_OP_DOMAIN_LIST 2u	/* arg: first domid; out: domain records */
#define MV_OP_DOMAIN_INFO 3u	/* arg: domid; out: one domain record */
#define MV_OP_EVENTS_TAKE 4u	/* returns and clears the pending MV_EVENT_* bits */
#define MV_OP_FOREIGN_MAP 5u	/* arg: slot; in: struct mv_foreign_map_request */
#define MV_OP_FOREIGN_UNMAP 6u	/* arg: slot */
#define MV_OP_DOMAIN_PAUSE 7u	/* arg: domid; no buffer */
#define MV_OP_DOMAIN_UNPAUSE 8u	/* arg: domid; no buffer */
#define MV_OP_DOMAIN_DESTROY 9u	/* arg: domid; no buffer */
#define MV_OP_DOMAIN_CREATE 10u	/* in: struct mv_domain_create; returns the new domid */
#define MV_OP_DOMAIN_SET_ENTRY 11u	/* arg: domid; in: struct mv_vcpu_entry */

/*
 * MV_OP_EVENTS_TAKE belongs to the module: it takes the bits whenever the
 * event function interrupts and hands them to every open file. A process that
 * issues it through MV_IOCTL_CONTROL steals those bits from every reader.
 */

/* Event bit: a domain was created, changed state or went. */
#define MV_EVENT_DOMAIN_STATE (1ULL << 0)

/* The event function: a PCI device only Dom0 sees (one MSI vector, no BARs). */
#define MV_EVENT_VENDOR_ID 0x4d56
#define MV_EVENT_DEVICE_ID 0x0001

/* read() returns exactly this many bytes: the event mask, little-endian. */
#define MV_EVENT_READ_SIZE 8u

/* Size of one foreign-window slot; mmap offsets are slot * MV_SLOT_SIZE. */
#define MV_SLOT_SIZE 4096u

/* Result of MV_OP_HOST_INFO. 96 bytes, no padding. */
struct mv_host_info {
	__u32 control_version;	/* MV_CONTROL_VERSION of the microvisor */
	__u32 pcpus;		/* physical CPUs */
	__u32 dom0_pcpu;	/* the pCPU dedicated to domain 0 */
	__u32 reserved0;
	__u64 mem_total_kib;	/* usable RAM */
	__u64 mem_free_kib;	/* RAM given to nobody */
	__u64 tsc_khz;
	__u64 uptime_ns;
	char version[32];	/* NUL-padded ASCII */
	__u64 foreign_window_gpa;	/* guest-physical base of the window (0: none) */
	__u64 foreign_window_pages;	/* slots in the window */
};

/* Input of MV_OP_FOREIGN_MAP. 16 bytes. */
struct mv_foreign_map_request {
	__u32 domid;		/* the domain whose frame is mapped (not 0) */
	__u32 reserved;		/* zero */
	__u64 gfn;		/* its guest frame number */
};

/* Input of MV_OP_DOMAIN_CREATE. 48 bytes. */
struct mv_domain_create {
	__u32 mem_mib;		/* memory, MiB */
	__u32 vcpus;		/* 1 */
	__u32 reserved[2];	/* zero */
	char name[32];		/* NUL-padded printable ASCII, unique */
};

/* Input of MV_OP_DOMAIN_SET_ENTRY: the PVH entry state. 16 bytes. */
struct mv_vcpu_entry {
	__u64 entry;		/* guest-physical entry point (EIP) */
	__u64 start_info;	/* guest-physical hvm_start_info (EBX) */
};

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
_Static_assert(sizeof(struct mv_host_info) == 96,
	       "struct mv_host_info must match shared_abi HostInfo (96 bytes)");
_Static_assert(sizeof(struct mv_foreign_map_request) == 16,
	       "struct mv_foreign_map_request must match shared_abi ForeignMapRequest (16 bytes)");
_Static_assert(sizeof(struct mv_domain_create) == 48,
	       "struct mv_domain_create must match shared_abi DomainCreateRequest (48 bytes)");
_Static_assert(sizeof(struct mv_vcpu_entry) == 16,
	       "struct mv_vcpu_entry must match shared_abi VcpuEntry (16 bytes)");

#endif /* MICROVISOR_UAPI_H */
