/* Records that heron's BPF programs write to the ring buffer, shared with Python.
 *
 * src/heron/agent/ebpf/abi.py mirrors these layouts; tests/agent/ebpf/test_abi.py checks the
 * mirror against the BTF of the built object, so a change here that is not made there fails
 * the tests. Raise HERON_ABI_VERSION when a field changes meaning, size or place.
 *
 * Every struct is laid out by hand without implicit padding (explicit _pad fields), little
 * endian, fixed-width types only.
 */
#ifndef HERON_ABI_H
#define HERON_ABI_H

#define HERON_ABI_VERSION 1

/* kind: the first field of every record. */
#define HERON_EV_EXEC 1
#define HERON_EV_EXIT 2

/* heron_exec.flags */
#define HERON_F_ARGV_TRUNCATED 0x1 /* argv was longer than HERON_ARGV_MAX and was cut */
#define HERON_F_ARGV_FAULT 0x2     /* argv could not be read from user memory */
#define HERON_F_USER_CGROUP 0x4    /* the cgroup is below a user@UID.service (user-delegated) */

#define HERON_COMM_LEN 16
#define HERON_FILENAME_MAX 512 /* bprm->filename, NUL included */
#define HERON_CGNAME_MAX 128   /* one cgroup directory name, NUL included */
#define HERON_STR_AREA 2048    /* room for filename + 4 cgroup names (power of two) */
#define HERON_ARGV_MAX 16384   /* argv bytes copied from mm->arg_start (power of two) */

/* Slots of the per-CPU heron_stats array. */
#define HERON_STAT_LOST 0       /* ring-buffer output failures (events dropped in the kernel) */
#define HERON_STAT_ARGV_FAULT 1 /* execs whose argv could not be read */
#define HERON_STAT_EXCLUDED 2   /* events filtered out by the excluded comm names */
#define HERON_STAT_COUNT 4

/* An execve. Fixed header, then `data`: filename, cg2 leaf, cg2 parent, cg1 leaf, cg1 parent,
 * each followed by one NUL (the *_len fields exclude it), then argv_len bytes of argv
 * (NUL-separated, as in /proc/PID/cmdline). The record is only as long as what it carries. */
struct heron_exec {
	__u32 kind;
	__u32 flags;
	__u64 ts_boot_ns;             /* bpf_ktime_get_boot_ns() at the event */
	__u64 start_boottime_ns;      /* task->group_leader->start_boottime */
	__u64 parent_start_boottime_ns; /* real_parent->group_leader->start_boottime */
	__u64 cgroup_id;              /* cgroup v2 id */
	__u32 pid;                    /* tgid */
	__u32 tid;                    /* the thread that called execve (old_pid) */
	__u32 ppid;                   /* real_parent->tgid */
	__u32 uid;
	__u32 gid;
	__u32 euid;
	__u32 egid;
	__u32 loginuid;               /* 0xffffffff when unset */
	__u16 filename_len;
	__u16 cg2_leaf_len;
	__u16 cg2_parent_len;
	__u16 cg1_leaf_len;
	__u16 cg1_parent_len;
	__u16 argv_len;
	__u32 _pad;
	char comm[HERON_COMM_LEN];
};

/* A thread group's exit (only the last thread's exit is reported). */
struct heron_exit {
	__u32 kind;
	__u32 flags;
	__u64 ts_boot_ns;
	__u64 start_boottime_ns; /* of the group leader: with pid it makes the process key */
	__u32 pid;               /* tgid */
	__u32 tid;               /* the last thread to exit */
	__u32 exit_code;         /* wait status: (status << 8) | signal | 0x80 if core dumped */
	__u32 _pad;
	char comm[HERON_COMM_LEN];
};

/* Per-CPU scratch where an exec record is assembled before it is copied to the ring. */
struct heron_exec_scratch {
	struct heron_exec hdr;
	char data[HERON_STR_AREA + HERON_ARGV_MAX];
};

#endif /* HERON_ABI_H */
