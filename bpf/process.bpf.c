// SPDX-License-Identifier: GPL-2.0
/* Process execs and exits for heron's process.ebpf source.
 *
 * Two hooks, each in two flavours: tp_btf (BTF-typed tracepoint, preferred) and raw_tp (the
 * fallback where tp_btf is refused). User space picks one flavour per hook with
 * bpf_program__set_autoload. Both flavours share one inline body that reads the kernel only
 * through CO-RE reads, which is valid in either.
 *
 * Excluded comm names (heron_excl_comm) are dropped here, so they never cost a ring-buffer
 * record or a Python wake-up; their tgids go into an LRU so their exits are dropped too.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "heron_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define CG_WALK_MAX 12 /* cgroup ancestors looked at for a user manager */

/* Read by user space from the object's .rodata to refuse a stale object. */
const volatile __u32 heron_abi_version = HERON_ABI_VERSION;
/* Never read: keeps struct heron_exit in the object's BTF for the ABI test. */
const volatile struct heron_exit heron_exit_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} heron_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HERON_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} heron_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct heron_exec_scratch);
} heron_scratch SEC(".maps");

struct heron_comm {
	char name[HERON_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct heron_comm);
	__type(value, __u8);
} heron_excl_comm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} heron_excl_tgid SEC(".maps");


/* kernfs_node->parent became __parent in 6.15: accept either. */
struct kernfs_node___pre615 {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

struct kernfs_node___615 {
	struct kernfs_node *__parent;
} __attribute__((preserve_access_index));

static __always_inline void stat_add(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&heron_stats, &slot);
	if (v)
		*v += 1;
}

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(struct kernfs_node___615, __parent))
		return BPF_CORE_READ((struct kernfs_node___615 *)kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___pre615 *)kn, parent);
}

/* Copies a kernel string to data + *off; returns its length without the NUL. */
static __always_inline __u16 put_kstr(char *data, __u32 *off, const char *src, __u32 max)
{
	long n;

	if (!src)
		goto empty;
	n = bpf_probe_read_kernel_str(data + (*off & (HERON_STR_AREA - 1)), max, src);
	if (n <= 0)
		goto empty;
	*off += n;
	return n - 1;
empty:
	data[*off & (HERON_STR_AREA - 1)] = 0;
	*off += 1;
	return 0;
}

static __always_inline __u16 put_kn_name(char *data, __u32 *off, struct kernfs_node *kn)
{
	const char *name = kn ? BPF_CORE_READ(kn, name) : 0;
	return put_kstr(data, off, name, HERON_CGNAME_MAX);
}

static __always_inline struct kernfs_node *css_kn(struct css_set *cset, int id)
{
	if (id < 0 || id >= 16)
		return 0;
	struct cgroup_subsys_state *css = BPF_CORE_READ(cset, subsys[id & 15]);
	return css ? BPF_CORE_READ(css, cgroup, kn) : 0;
}

/* The cgroup v1 directory that names the container: the memory hierarchy's when the task is
 * below its root (runtimes always set memory limits), else the pids hierarchy's. */
static __always_inline struct kernfs_node *v1_cgroup_kn(struct css_set *cset)
{
	struct kernfs_node *kn = 0;
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		kn = css_kn(cset, bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id));
		if (kn && kn_parent(kn))
			return kn;
	}
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, pids_cgrp_id))
		return css_kn(cset, bpf_core_enum_value(enum cgroup_subsys_id, pids_cgrp_id));
	return kn;
}

/* True when a cgroup at or above kn is a systemd user manager ("user@UID.service"): below it the
 * user creates and names cgroups, so a "docker-<id>.scope" there proves nothing. Only the last two
 * names are sent to user space, so the kernel has to look at the rest of the path. */
static __always_inline int under_user_manager(struct kernfs_node *kn)
{
	char name[6];
	for (int i = 0; i < CG_WALK_MAX; i++) {
		if (!kn)
			return 0;
		const char *n = BPF_CORE_READ(kn, name);
		if (n && bpf_probe_read_kernel_str(name, sizeof(name), n) == sizeof(name) &&
		    name[0] == 'u' && name[1] == 's' && name[2] == 'e' && name[3] == 'r' && name[4] == '@')
			return 1;
		kn = kn_parent(kn);
	}
	return 0;
}

static __always_inline int comm_excluded(const char *comm)
{
	return bpf_map_lookup_elem(&heron_excl_comm, comm) != 0;
}

static __always_inline int on_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct heron_exec_scratch *s = bpf_map_lookup_elem(&heron_scratch, &zero);
	if (!s)
		return 0;
	struct heron_exec *e = &s->hdr;
	__u32 tgid = BPF_CORE_READ(p, tgid);

	bpf_get_current_comm(e->comm, sizeof(e->comm));
	if (comm_excluded(e->comm)) {
		__u8 one = 1;
		bpf_map_update_elem(&heron_excl_tgid, &tgid, &one, BPF_ANY);
		stat_add(HERON_STAT_EXCLUDED);
		return 0;
	}
	/* A process that was excluded may exec something we report: forget it. */
	bpf_map_delete_elem(&heron_excl_tgid, &tgid);

	struct task_struct *parent = BPF_CORE_READ(p, real_parent);
	const struct cred *cred = BPF_CORE_READ(p, cred);
	struct css_set *cset = BPF_CORE_READ(p, cgroups);

	e->kind = HERON_EV_EXEC;
	e->flags = 0;
	e->ts_boot_ns = bpf_ktime_get_boot_ns();
	e->start_boottime_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	e->parent_start_boottime_ns = BPF_CORE_READ(parent, group_leader, start_boottime);
	e->cgroup_id = BPF_CORE_READ(cset, dfl_cgrp, kn, id);
	e->pid = tgid;
	e->tid = old_pid; /* a non-leader thread that execs takes over the tgid: report who it was */
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->uid = BPF_CORE_READ(cred, uid.val);
	e->gid = BPF_CORE_READ(cred, gid.val);
	e->euid = BPF_CORE_READ(cred, euid.val);
	e->egid = BPF_CORE_READ(cred, egid.val);
	e->loginuid = 0xffffffff;
	if (bpf_core_field_exists(p->loginuid))
		e->loginuid = BPF_CORE_READ(p, loginuid.val);
	e->_pad = 0;

	__u32 off = 0;
	char *data = s->data;
	e->filename_len = put_kstr(data, &off, BPF_CORE_READ(bprm, filename), HERON_FILENAME_MAX);
	struct kernfs_node *kn2 = BPF_CORE_READ(cset, dfl_cgrp, kn);
	e->cg2_leaf_len = put_kn_name(data, &off, kn2);
	e->cg2_parent_len = put_kn_name(data, &off, kn2 ? kn_parent(kn2) : 0);
	struct kernfs_node *kn1 = v1_cgroup_kn(cset);
	e->cg1_leaf_len = put_kn_name(data, &off, kn1);
	e->cg1_parent_len = put_kn_name(data, &off, kn1 ? kn_parent(kn1) : 0);
	if (under_user_manager(kn2) || under_user_manager(kn1))
		e->flags |= HERON_F_USER_CGROUP;

	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(mm, arg_end);
	__u64 argv_len = arg_end > arg_start ? arg_end - arg_start : 0;
	if (argv_len > HERON_ARGV_MAX) {
		argv_len = HERON_ARGV_MAX;
		e->flags |= HERON_F_ARGV_TRUNCATED;
	}
	off &= HERON_STR_AREA - 1;
	if (argv_len > 0 &&
	    bpf_probe_read_user(data + off, argv_len & (2 * HERON_ARGV_MAX - 1), (void *)arg_start) < 0) {
		e->flags |= HERON_F_ARGV_FAULT;
		stat_add(HERON_STAT_ARGV_FAULT);
		argv_len = 0;
	}
	e->argv_len = argv_len;

	__u64 size = sizeof(struct heron_exec) + off + argv_len;
	if (size > sizeof(*s))
		size = sizeof(*s);
	if (bpf_ringbuf_output(&heron_events, s, size, 0) < 0)
		stat_add(HERON_STAT_LOST);
	return 0;
}

static __always_inline int on_exit(struct task_struct *p, bool group_dead)
{
	if (!group_dead)
		return 0;
	__u32 tgid = BPF_CORE_READ(p, tgid);
	char comm[HERON_COMM_LEN];
	bpf_get_current_comm(comm, sizeof(comm));
	/* Only the exec decides: a reported process that renames itself (prctl PR_SET_NAME) to an
	 * excluded comm must not be able to hide its exit. */
	if (bpf_map_lookup_elem(&heron_excl_tgid, &tgid)) {
		bpf_map_delete_elem(&heron_excl_tgid, &tgid);
		stat_add(HERON_STAT_EXCLUDED);
		return 0;
	}
	struct heron_exit *e = bpf_ringbuf_reserve(&heron_events, sizeof(*e), 0);
	if (!e) {
		stat_add(HERON_STAT_LOST);
		return 0;
	}
	e->kind = HERON_EV_EXIT;
	e->flags = 0;
	e->ts_boot_ns = bpf_ktime_get_boot_ns();
	e->start_boottime_ns = BPF_CORE_READ(p, group_leader, start_boottime);
	e->pid = tgid;
	e->tid = BPF_CORE_READ(p, pid);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->_pad = 0;
	__builtin_memcpy(e->comm, comm, sizeof(comm));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(heron_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(p, old_pid, bprm);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(heron_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return on_exec(p, old_pid, bprm);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(heron_exit_btf, struct task_struct *p, bool group_dead)
{
	return on_exit(p, group_dead);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(heron_exit_raw, struct task_struct *p, bool group_dead)
{
	return on_exit(p, group_dead);
}
