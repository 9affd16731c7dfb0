// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * microvisor.ko: Dom0's door to the microvisor.
 *
 * Dom0 is native Linux; it reaches the microvisor only through this module.
 * The module is policy-free: it checks that it runs on the microvisor, then
 * offers /dev/microvisor (mode 0600, CAP_SYS_ADMIN to open) with
 * - one ioctl, which issues the control hypercall (VMMCALL, which the
 *   microvisor accepts only from domain 0 at CPL 0) on behalf of dom0d;
 * - read()/poll() of the microvisor's events: a PCI driver for the event
 *   function takes the event bits whenever its MSI fires and hands them to
 *   every open file;
 * - mmap() of the foreign window, where the microvisor maps other domains'
 *   frames on request (MV_OP_FOREIGN_MAP through the ioctl).
 * What a call may do is decided by the microvisor and dom0d, not here.
 *
 * The interface is in microvisor.h, kept in sync with shared-abi; README.md
 * describes the semantics.
 */
#define pr_fmt(fmt) "microvisor: " fmt

#include <linux/capability.h>
#include <linux/device.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/interrupt.h>
#include <linux/ioport.h>
#include <linux/limits.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
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

/* ---- Events ---------------------------------------------------------------
 *
 * Every open file has its own pending mask, 0 at open. When the event
 * function's MSI fires, a work item takes the bits from the microvisor
 * (MV_OP_EVENTS_TAKE, which clears them there) and ORs them into the mask of
 * every file open at that moment, then wakes readers and pollers. Bits taken
 * while no file is open are counted in events_seen and dropped. One take right
 * after MSI is set up collects what was raised before (Dom0's own boot).
 *
 * Without the event function (not found, or probe failed) nothing ever takes
 * the bits: read() blocks (or fails with EAGAIN) and poll() never reports
 * EPOLLIN, while the ioctl and mmap keep working.
 */

struct mv_file {
	struct list_head node;	/* in mv_files, under mv_events_lock */
	u64 pending;		/* MV_EVENT_* bits not read yet, under mv_events_lock */
};

static DEFINE_SPINLOCK(mv_events_lock);
static LIST_HEAD(mv_files);
/* Non-zero masks taken from the microvisor since the module loaded. */
static u64 mv_events_seen;
static DECLARE_WAIT_QUEUE_HEAD(mv_events_wait);

static void mv_events_take(struct work_struct *work)
{
	struct mv_file *f;
	long ret;

	/* No buffer: the operation only returns the mask. */
	ret = mv_control_hypercall(MV_OP_EVENTS_TAKE, 0, 0, 0, MV_CONTROL_VERSION);
	if (ret < 0) {
		pr_warn_ratelimited("taking the event bits failed: %ld\n", ret);
		return;
	}
	/* 0: an earlier take already collected what this interrupt announced. */
	if (ret == 0)
		return;

	spin_lock(&mv_events_lock);
	mv_events_seen++;
	list_for_each_entry(f, &mv_files, node)
		WRITE_ONCE(f->pending, f->pending | (u64)ret);
	spin_unlock(&mv_events_lock);
	wake_up_interruptible_poll(&mv_events_wait, EPOLLIN | EPOLLRDNORM);
}

static DECLARE_WORK(mv_events_work, mv_events_take);

/* The hypercall does not sleep, but keep the hard interrupt minimal. */
static irqreturn_t mv_events_irq(int irq, void *data)
{
	schedule_work(&mv_events_work);
	return IRQ_HANDLED;
}

/* The bound event function (at most one), under mv_event_fn_lock. */
static DEFINE_MUTEX(mv_event_fn_lock);
static struct pci_dev *mv_event_fn;

static int mv_pci_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int err, irq;

	mutex_lock(&mv_event_fn_lock);
	if (mv_event_fn) {
		dev_warn(&pdev->dev, "a second event function; %s already delivers events\n",
			 pci_name(mv_event_fn));
		err = -EBUSY;
		goto unlock;
	}
	err = pci_enable_device(pdev);
	if (err) {
		dev_err(&pdev->dev, "cannot enable the event function: %d\n", err);
		goto unlock;
	}
	/* MSI is a memory write by the function; a real device needs bus mastering. */
	pci_set_master(pdev);
	err = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI);
	if (err < 0) {
		dev_err(&pdev->dev, "cannot set up MSI: %d\n", err);
		goto disable;
	}
	irq = pci_irq_vector(pdev, 0);
	if (irq < 0) {
		err = irq;
		goto free_vectors;
	}
	err = request_irq(irq, mv_events_irq, 0, "microvisor-events", pdev);
	if (err) {
		dev_err(&pdev->dev, "cannot request irq %d: %d\n", irq, err);
		goto free_vectors;
	}
	mv_event_fn = pdev;
	mutex_unlock(&mv_event_fn_lock);
	/*
	 * Events raised before MSI was enabled are pending in the microvisor
	 * without an interrupt: take them now.
	 */
	schedule_work(&mv_events_work);
	dev_info(&pdev->dev, "event function ready (MSI, irq %d)\n", irq);
	return 0;

free_vectors:
	pci_free_irq_vectors(pdev);
disable:
	pci_clear_master(pdev);
	pci_disable_device(pdev);
unlock:
	mutex_unlock(&mv_event_fn_lock);
	return err;
}

static void mv_pci_remove(struct pci_dev *pdev)
{
	mutex_lock(&mv_event_fn_lock);
	free_irq(pci_irq_vector(pdev, 0), pdev);
	/* No interrupt schedules it any more; let a running take finish. */
	cancel_work_sync(&mv_events_work);
	pci_free_irq_vectors(pdev);
	pci_clear_master(pdev);
	pci_disable_device(pdev);
	mv_event_fn = NULL;
	mutex_unlock(&mv_event_fn_lock);
}

static const struct pci_device_id mv_pci_ids[] = {
	{ PCI_DEVICE(MV_EVENT_VENDOR_ID, MV_EVENT_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, mv_pci_ids);

static struct pci_driver mv_pci_driver = {
	.name = "microvisor-events",
	.id_table = mv_pci_ids,
	.probe = mv_pci_probe,
	.remove = mv_pci_remove,
};

/* ---- Foreign window --------------------------------------------------------
 *
 * Read once at load from HostInfo. 0 pages: no window, every mmap fails.
 */
static u64 mv_window_gpa;
static u64 mv_window_pages;

static void __init mv_read_foreign_window(void)
{
	struct mv_host_info *hi;
	unsigned long page;
	u64 gpa, pages, limit;
	long ret;

	page = get_zeroed_page(GFP_KERNEL);
	if (!page) {
		pr_warn("no page for HostInfo; mmap is disabled\n");
		return;
	}
	hi = (struct mv_host_info *)page;
	ret = mv_control_hypercall(MV_OP_HOST_INFO, virt_to_phys(hi), sizeof(*hi), 0,
				   MV_CONTROL_VERSION);
	if (ret != sizeof(*hi)) {
		pr_warn("HostInfo returned %ld, expected %zu; mmap is disabled\n",
			ret, sizeof(*hi));
		goto out;
	}
	gpa = hi->foreign_window_gpa;
	pages = hi->foreign_window_pages;
	if (!gpa || !pages) {
		pr_info("the microvisor offers no foreign window; mmap is disabled\n");
		goto out;
	}
	limit = 1ULL << boot_cpu_data.x86_phys_bits;
	if (!PAGE_ALIGNED(gpa) || gpa >= limit || pages > (limit - gpa) >> PAGE_SHIFT) {
		pr_warn("ignoring a foreign window of %llu pages at %#llx (unaligned or beyond %u address bits); mmap is disabled\n",
			pages, gpa, boot_cpu_data.x86_phys_bits);
		goto out;
	}
	/* Never hand out Dom0's own RAM, whatever the microvisor says. */
	if (region_intersects(gpa, pages << PAGE_SHIFT, IORESOURCE_SYSTEM_RAM,
			      IORES_DESC_NONE) != REGION_DISJOINT) {
		pr_warn("ignoring a foreign window of %llu pages at %#llx: it overlaps RAM; mmap is disabled\n",
			pages, gpa);
		goto out;
	}
	mv_window_gpa = gpa;
	mv_window_pages = pages;
	pr_info("foreign window: %llu slots at %#llx\n", pages, gpa);
out:
	free_page(page);
}

/* ---- /dev/microvisor -------------------------------------------------------- */

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
	struct mv_file *f;
	int err;

	/* The node is 0600 root; a root process without the capability stays out too. */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	err = nonseekable_open(inode, file);
	if (err)
		return err;
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	spin_lock(&mv_events_lock);
	list_add_tail(&f->node, &mv_files);
	spin_unlock(&mv_events_lock);
	file->private_data = f;
	return 0;
}

static int mv_release(struct inode *inode, struct file *file)
{
	struct mv_file *f = file->private_data;

	spin_lock(&mv_events_lock);
	list_del(&f->node);
	spin_unlock(&mv_events_lock);
	kfree(f);
	return 0;
}

/* Takes (and clears) the file's pending mask. */
static u64 mv_take_pending(struct mv_file *f)
{
	u64 bits;

	spin_lock(&mv_events_lock);
	bits = f->pending;
	WRITE_ONCE(f->pending, 0);
	spin_unlock(&mv_events_lock);
	return bits;
}

/*
 * Blocks until the file's mask is not zero (EAGAIN with O_NONBLOCK), then
 * returns it as 8 little-endian bytes and clears it. Shorter buffers: EINVAL.
 */
static ssize_t mv_read(struct file *file, char __user *buf, size_t len, loff_t *ppos)
{
	struct mv_file *f = file->private_data;
	__le64 out;
	u64 bits;
	int err;

	if (len < MV_EVENT_READ_SIZE)
		return -EINVAL;
	for (;;) {
		bits = mv_take_pending(f);
		if (bits)
			break;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		err = wait_event_interruptible(mv_events_wait, READ_ONCE(f->pending) != 0);
		if (err)
			return err;
	}
	out = cpu_to_le64(bits);
	if (copy_to_user(buf, &out, sizeof(out))) {
		/* Nothing was delivered: keep the bits for the next read. */
		spin_lock(&mv_events_lock);
		WRITE_ONCE(f->pending, f->pending | bits);
		spin_unlock(&mv_events_lock);
		return -EFAULT;
	}
	return sizeof(out);
}

static __poll_t mv_poll(struct file *file, poll_table *wait)
{
	struct mv_file *f = file->private_data;

	poll_wait(file, &mv_events_wait, wait);
	return READ_ONCE(f->pending) ? EPOLLIN | EPOLLRDNORM : 0;
}

/*
 * Maps foreign-window slots vm_pgoff .. vm_pgoff + pages - 1 into the caller.
 * Only shared mappings, only inside the window. Whether a slot is filled is
 * the caller's business: an access to an empty slot faults in Dom0 (the
 * microvisor injects #GP; in a process that is SIGSEGV). A slot refilled with
 * MV_OP_FOREIGN_MAP shows the new frame through existing mappings.
 */
static int mv_mmap(struct file *file, struct vm_area_struct *vma)
{
	unsigned long first = vma->vm_pgoff;
	unsigned long pages = vma_pages(vma);

	if (!(vma->vm_flags & VM_MAYSHARE))
		return -EINVAL;
	if (first >= mv_window_pages || pages > mv_window_pages - first)
		return -EINVAL;
	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
	return remap_pfn_range(vma, vma->vm_start, PHYS_PFN(mv_window_gpa) + first,
			       pages << PAGE_SHIFT, vma->vm_page_prot);
}

static const struct file_operations mv_fops = {
	.owner = THIS_MODULE,
	.open = mv_open,
	.release = mv_release,
	.read = mv_read,
	.poll = mv_poll,
	.mmap = mv_mmap,
	.unlocked_ioctl = mv_ioctl,
	.llseek = no_llseek,
};

/* ---- sysfs: /sys/class/misc/microvisor/ -------------------------------------- */

static ssize_t events_seen_show(struct device *dev, struct device_attribute *attr,
				char *buf)
{
	u64 n;

	spin_lock(&mv_events_lock);
	n = mv_events_seen;
	spin_unlock(&mv_events_lock);
	return sysfs_emit(buf, "%llu\n", n);
}
static DEVICE_ATTR_RO(events_seen);

static ssize_t event_function_show(struct device *dev, struct device_attribute *attr,
				   char *buf)
{
	ssize_t n;

	mutex_lock(&mv_event_fn_lock);
	n = sysfs_emit(buf, "%s\n", mv_event_fn ? pci_name(mv_event_fn) : "none");
	mutex_unlock(&mv_event_fn_lock);
	return n;
}
static DEVICE_ATTR_RO(event_function);

static ssize_t foreign_window_show(struct device *dev, struct device_attribute *attr,
				   char *buf)
{
	return sysfs_emit(buf, "%#llx %llu\n", mv_window_gpa, mv_window_pages);
}
static DEVICE_ATTR_RO(foreign_window);

static struct attribute *mv_attrs[] = {
	&dev_attr_events_seen.attr,
	&dev_attr_event_function.attr,
	&dev_attr_foreign_window.attr,
	NULL,
};
ATTRIBUTE_GROUPS(mv);

static struct miscdevice mv_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "microvisor",
	.fops = &mv_fops,
	.mode = 0600,
	.groups = mv_groups,
};

static int __init mv_init(void)
{
	int err;

	BUILD_BUG_ON(sizeof(struct mv_control) != 40);
	BUILD_BUG_ON(MV_IOCTL_CONTROL != 0xc0284d01u);
	BUILD_BUG_ON(sizeof(struct mv_host_info) != 96);
	BUILD_BUG_ON(sizeof(struct mv_foreign_map_request) != 16);
	BUILD_BUG_ON(sizeof(struct mv_domain_create) != 48);
	BUILD_BUG_ON(sizeof(struct mv_vcpu_entry) != 16);
	BUILD_BUG_ON(PAGE_SIZE != MV_SLOT_SIZE);

	if (!mv_detect()) {
		pr_err("not running on the microvisor (no \"MicrovisorMV\" signature at CPUID 0x40000000); refusing to load\n");
		return -ENODEV;
	}
	mv_read_foreign_window();
	err = misc_register(&mv_misc);
	if (err) {
		pr_err("cannot register /dev/microvisor: %d\n", err);
		return err;
	}
	/* Binds now if the event function exists; without it there are no events. */
	err = pci_register_driver(&mv_pci_driver);
	if (err) {
		pr_err("cannot register the event function's driver: %d\n", err);
		misc_deregister(&mv_misc);
		return err;
	}
	pr_info("/dev/microvisor ready (events: %s)\n",
		READ_ONCE(mv_event_fn) ? "yes" : "no event function");
	return 0;
}

static void __exit mv_exit(void)
{
	/* No file is open (each holds a module reference). */
	pci_unregister_driver(&mv_pci_driver);
	misc_deregister(&mv_misc);
}

module_init(mv_init);
module_exit(mv_exit);

MODULE_DESCRIPTION("Dom0 interface to the microvisor: control hypercalls, events, foreign mappings");
/* GPL-compatible, so loading it taints the kernel only as unsigned (not as proprietary). */
MODULE_LICENSE("Dual MIT/GPL");
