// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * microvisor.ko: Dom0's door to the microvisor.
 *
 * Dom0 is native Linux; it reaches the microvisor only through this module.
 * The module is policy-free: it checks that it runs on the microvisor, then
 * offers /dev/microvisor (mode 0600, CAP_SYS_ADMIN to open), whose one ioctl
 * issues the control hypercall (VMMCALL, which the microvisor accepts only
 * from domain 0 at CPL 0) on behalf of dom0d. What a call may do is decided
 * by the microvisor and dom0d, not here.
 *
 * The ioctl layout is in microvisor.h, kept in sync with shared-abi.
 */
#define pr_fmt(fmt) "microvisor: " fmt

#include <linux/capability.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/limits.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <asm/cpufeature.h>
#include <asm/io.h>
#include <asm/processor.h>

#include "microvisor.h"

/* CPUID leaf with the hypervisor's signature in EBX, ECX, EDX. */
#define MV_CPUID_BASE 0x40000000u
/* shared_abi::cpuid::MICROVISOR_CPUID_SIGNATURE, as bytes. */
static const char mv_signature[12] = "MicrovisorMV";

static bool mv_detect(void)
{
	unsigned int eax, regs[3];

	/* Without the hypervisor bit the leaf holds whatever the CPU has there. */
	if (!boot_cpu_has(X86_FEATURE_HYPERVISOR))
		return false;
	cpuid(MV_CPUID_BASE, &eax, &regs[0], &regs[1], &regs[2]);
	return memcmp(regs, mv_signature, sizeof(mv_signature)) == 0;
}

/*
 * The control hypercall. The microvisor reads RAX (number), RDI, RSI, RDX,
 * R10 and R8 and writes the result to RAX; it may clobber every argument
 * register, so all of them are in/out operands. It writes the buffer page,
 * hence the memory clobber.
 */
static long mv_control_hypercall(u64 op, u64 gpa, u64 len, u64 arg, u64 version)
{
	register u64 r10 asm("r10") = arg;
	register u64 r8 asm("r8") = version;
	long ret = MV_CONTROL_HYPERCALL;

	asm volatile("vmmcall"
		     : "+a"(ret), "+D"(op), "+S"(gpa), "+d"(len),
		       "+r"(r10), "+r"(r8)
		     :
		     : "memory", "cc");
	return ret;
}

static long mv_ioctl_control(void __user *argp)
{
	struct mv_control ctl;
	void __user *ubuf;
	unsigned long page;
	long ret;

	if (copy_from_user(&ctl, argp, sizeof(ctl)))
		return -EFAULT;
	if (ctl.reserved != 0 || ctl.buf_len > MV_MAX_BUFFER)
		return -EINVAL;
	ubuf = u64_to_user_ptr(ctl.buf);

	/* Zeroed, so nothing of the kernel's reaches the microvisor or the caller. */
	page = get_zeroed_page(GFP_KERNEL);
	if (!page)
		return -ENOMEM;

	if (copy_from_user((void *)page, ubuf, ctl.buf_len)) {
		ret = -EFAULT;
		goto out;
	}

	/* Dom0 is identity-mapped: its physical address is the machine address. */
	ret = mv_control_hypercall(ctl.op, virt_to_phys((void *)page),
				   ctl.buf_len, ctl.arg, ctl.version);
	if (ret < 0) {
		/* Anything but an errno would confuse the caller. */
		if (ret < -MAX_ERRNO)
			ret = -EIO;
		goto out;
	}
	if (ret > INT_MAX) {
		/* libc's ioctl() returns int; do not let the result wrap. */
		pr_warn_ratelimited("control op %llu returned %ld, beyond an ioctl result\n",
				    ctl.op, ret);
		ret = -EIO;
		goto out;
	}
	if (copy_to_user(ubuf, (void *)page, ctl.buf_len))
		ret = -EFAULT;
out:
	free_page(page);
	return ret;
}

static long mv_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case MV_IOCTL_CONTROL:
		return mv_ioctl_control((void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static int mv_open(struct inode *inode, struct file *file)
{
	/* The node is 0600 root; a root process without the capability stays out too. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	return nonseekable_open(inode, file);
}

/*
 * Later, foreign mappings (mmap of another domain's frames for the domain
 * builder and back-ends) and event delivery (poll/read on the event
 * function's MSI) join this device.
 */
static const struct file_operations mv_fops = {
	.owner = THIS_MODULE,
	.open = mv_open,
	.unlocked_ioctl = mv_ioctl,
	.llseek = no_llseek,
};

static struct miscdevice mv_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "microvisor",
	.fops = &mv_fops,
	.mode = 0600,
};

static int __init mv_init(void)
{
	int err;

	BUILD_BUG_ON(sizeof(struct mv_control) != 40);
	BUILD_BUG_ON(MV_IOCTL_CONTROL != 0xc0284d01u);

	if (!mv_detect()) {
		pr_err("not running on the microvisor (no \"MicrovisorMV\" signature at CPUID 0x40000000); refusing to load\n");
		return -ENODEV;
	}
	err = misc_register(&mv_misc);
	if (err) {
		pr_err("cannot register /dev/microvisor: %d\n", err);
		return err;
	}
	pr_info("/dev/microvisor ready\n");
	return 0;
}

static void __exit mv_exit(void)
{
	misc_deregister(&mv_misc);
}

module_init(mv_init);
module_exit(mv_exit);

MODULE_DESCRIPTION("Dom0 interface to the microvisor: /dev/microvisor control hypercalls");
/* GPL-compatible, so loading it taints the kernel only as unsigned (not as proprietary). */
MODULE_LICENSE("Dual MIT/GPL");
