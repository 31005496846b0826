// SPDX-License-Identifier: GPL-2.0
/* Connections, traffic, listening sockets and DNS payloads for heron's network.ebpf source.
 *
 * Attribution happens where a process is running: cgroup/sock_create records the creator of
 * every TCP/UDP socket (pid, start time, uid) under the socket cookie; inet_sock_set_state
 * (tp_btf, or raw_tp) updates it when a process connects (SYN_SENT) or listens (LISTEN), and
 * gives an accepted socket (SYN_RECV, in softirq) the owner of its listener, found by network
 * namespace and port. The first process to send or receive on an accepted socket
 * (sock_send_length / sock_recv_length) then replaces the listener's owner when it differs
 * (pre-fork servers, socket activation).
 *
 * Counting happens per packet in cgroup_skb ingress/egress on the cgroup v2 root: L4 payload
 * bytes and packets (GSO segments) per (socket cookie, peer address, peer port) in
 * heron_net_flows. Only two records per flow reach the ring buffer: FLOW_OPEN at its first
 * packet and, for TCP, FLOW_CLOSE with the final counters when the socket reaches CLOSE (the
 * entry is deleted then). UDP flows are finished by user space after the RELEASE record.
 * TCP bytes while a connection lives: egress once per sequence number, ingress every payload
 * byte that arrives (retransmissions too); at CLOSE the record carries the kernel's exact totals
 * (bytes_acked, bytes_received), which replace both. A UDP socket counts at most
 * HERON_NET_UDP_MAX_PEERS peers separately; later ones share a wildcard flow (address 0, port 0).
 * Packets to or from a port in heron_net_dnsports (the peer's port: this host's questions and
 * their answers, not the traffic of a local DNS server) also copy their payload to the ring.
 *
 * Every cgroup program returns 1: heron observes, it never drops or refuses anything.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "heron_net_abi.h"

char LICENSE[] SEC("license") = "GPL";

#define H_AF_INET 2
#define H_AF_INET6 10
#define H_PROTO_TCP 6
#define H_PROTO_UDP 17
#define H_TCP_SYN_SENT 2
#define H_TCP_SYN_RECV 3
#define H_TCP_CLOSE 7
#define H_TCP_LISTEN 10
#define H_TCP_NEW_SYN_RECV 12
#define H_PF_KTHREAD 0x00200000
#define H_HDR_MAX 60 /* IPv6 header + TCP header without options */
#define H_V6_EXT_MAX 4 /* IPv6 extension headers walked before giving up */

/* Read by user space from the object's .rodata to refuse a stale object. */
const volatile __u32 heron_net_abi_version = HERON_NET_ABI_VERSION;
/* Never read: keep every record type in the object's BTF for the ABI test. */
const volatile struct heron_net_flow_open heron_net_l1 = {};
const volatile struct heron_net_flow_close heron_net_l2 = {};
const volatile struct heron_net_sock_event heron_net_l3 = {};
const volatile struct heron_net_dns heron_net_l4 = {};
const volatile struct heron_net_iter_sock heron_net_l5 = {};
const volatile struct heron_net_listener heron_net_l6 = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} heron_net_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HERON_NET_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} heron_net_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct heron_net_owner);
} heron_net_socks SEC(".maps");

/* Not LRU: a live flow is never silently evicted; when full, new flows are counted as lost. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct heron_net_flow_key);
	__type(value, struct heron_net_counters);
} heron_net_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct heron_net_listen_key);
	__type(value, struct heron_net_listener);
} heron_net_listeners SEC(".maps");

struct heron_net_ports {
	__u8 bits[HERON_NET_DNS_PORTS_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct heron_net_ports);
} heron_net_dnsports SEC(".maps");

static __always_inline void stat_add(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&heron_net_stats, &slot);
	if (v)
		*v += 1;
}

/* The running process as an owner; 0 for kernel threads (nothing to attribute to). */
static __always_inline int current_owner(struct heron_net_owner *o)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	if (BPF_CORE_READ(t, flags) & H_PF_KTHREAD)
		return 0;
	o->start_boottime_ns = BPF_CORE_READ(t, group_leader, start_boottime);
	o->tgid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	return 1;
}

static __always_inline void mapped_v4(__u8 *dst, __u32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

static __always_inline void emit_sock_event(__u32 kind, __u32 flags, __u64 cookie, struct heron_net_owner *o,
					    __u8 *addr, __u16 port, __u8 proto)
{
	struct heron_net_sock_event *e = bpf_ringbuf_reserve(&heron_net_events, sizeof(*e), 0);
	if (!e) {
		stat_add(HERON_NET_STAT_LOST);
		return;
	}
	e->hdr.kind = kind;
	e->hdr.flags = flags;
	e->hdr.ts_boot_ns = bpf_ktime_get_boot_ns();
	e->cookie = cookie;
	e->owner = *o;
	__builtin_memcpy(e->addr, addr, 16);
	e->port = port;
	e->proto = proto;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	bpf_ringbuf_submit(e, 0);
}

/* -- process context: who created, bound, released a socket --------------------------------- */

SEC("cgroup/sock_create")
int heron_n_create(struct bpf_sock *ctx)
{
	__u32 proto = ctx->protocol;
	if (proto != H_PROTO_TCP && proto != H_PROTO_UDP)
		return 1;
	struct heron_net_owner o = {};
	if (!current_owner(&o))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	bpf_map_update_elem(&heron_net_socks, &cookie, &o, BPF_ANY);
	return 1;
}

SEC("cgroup/sock_release")
int heron_n_release(struct bpf_sock *ctx)
{
	__u32 proto = ctx->protocol;
	if (proto != H_PROTO_TCP && proto != H_PROTO_UDP)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct heron_net_owner *o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
	if (!o)
		return 1;
	if (proto == H_PROTO_TCP) {
		/* A connection lives on after close() until CLOSE; only an idle socket is done. */
		if (ctx->state == H_TCP_CLOSE)
			bpf_map_delete_elem(&heron_net_socks, &cookie);
		return 1;
	}
	if (o->flags & (HERON_NET_F_HAS_FLOW | HERON_NET_F_UDP_BOUND)) {
		/* The local address is not readable here: user space knows it from the LISTEN record. */
		struct heron_net_owner copy = *o;
		__u8 addr[16] = {};
		emit_sock_event(HERON_NET_EV_RELEASE, 0, cookie, &copy, addr, 0, H_PROTO_UDP);
	}
	bpf_map_delete_elem(&heron_net_socks, &cookie);
	return 1;
}

/* After a successful bind() (called for explicit binds only, not for the automatic bind of a
 * client's first send): a bound UDP socket is a listening socket until it is closed. */
static __always_inline int on_post_bind(struct bpf_sock *ctx, int v6)
{
	if (ctx->protocol != H_PROTO_UDP)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct heron_net_owner *o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
	if (!o || (o->flags & HERON_NET_F_UDP_BOUND))
		return 1;
	__sync_fetch_and_or(&o->flags, HERON_NET_F_UDP_BOUND);
	struct heron_net_owner copy = *o;
	__u8 addr[16] = {};
	if (v6) {
		__u32 a[4] = {ctx->src_ip6[0], ctx->src_ip6[1], ctx->src_ip6[2], ctx->src_ip6[3]};
		__builtin_memcpy(addr, a, 16);
	} else {
		mapped_v4(addr, ctx->src_ip4);
	}
	emit_sock_event(HERON_NET_EV_LISTEN, HERON_NET_R_OPEN, cookie, &copy, addr, ctx->src_port, H_PROTO_UDP);
	return 1;
}

SEC("cgroup/post_bind4")
int heron_n_pbind4(struct bpf_sock *ctx)
{
	return on_post_bind(ctx, 0);
}

SEC("cgroup/post_bind6")
int heron_n_pbind6(struct bpf_sock *ctx)
{
	return on_post_bind(ctx, 1);
}

/* -- TCP state changes ------------------------------------------------------------------------ */

static __always_inline void sk_local(const struct sock *sk, __u16 family, __u8 *addr)
{
	if (family == H_AF_INET6)
		bpf_core_read(addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	else
		mapped_v4(addr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
}

static __always_inline void sk_remote(const struct sock *sk, __u16 family, __u8 *addr)
{
	if (family == H_AF_INET6)
		bpf_core_read(addr, 16, &sk->__sk_common.skc_v6_daddr);
	else
		mapped_v4(addr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
}

/* The kernel's own payload totals of a TCP socket reaching CLOSE (the per-packet ingress count
 * includes retransmissions and segments the kernel dropped). bytes_acked also counts the
 * opener's SYN and this side's FIN once acknowledged, bytes_received the peer's FIN once taken
 * in order: the FINs are known from the sequence numbers the packet hooks saw them end at (c),
 * compared with snd_una and rcv_nxt. Without c (no packet counted) no totals are given. */
static __always_inline void tcp_totals(const struct sock *sk, int active, const struct heron_net_counters *c,
				       struct heron_net_flow_close *e)
{
	const struct tcp_sock *tp = (const struct tcp_sock *)sk;
	__u64 acked = BPF_CORE_READ(tp, bytes_acked);
	__u64 received = BPF_CORE_READ(tp, bytes_received);
	if (active && acked)
		acked -= 1; /* our SYN */
	if ((c->tcp_fins & 1) && acked && (__s32)(BPF_CORE_READ(tp, snd_una) - c->tcp_fin_out) >= 0)
		acked -= 1; /* our FIN, acknowledged */
	if ((c->tcp_fins & 2) && received && BPF_CORE_READ(tp, rcv_nxt) == c->tcp_fin_in)
		received -= 1; /* the peer's FIN, taken */
	e->tcp_bytes_out = acked;
	e->tcp_bytes_in = received;
	e->hdr.flags |= HERON_NET_R_TCP_TOTALS;
}

static __always_inline void on_state(const struct sock *sk, __u64 cookie, int oldstate, int newstate)
{
	struct heron_net_owner *o;
	struct heron_net_owner cur = {};
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 lport = BPF_CORE_READ(sk, __sk_common.skc_num);

	if (!cookie)
		return;
	if (newstate == H_TCP_SYN_SENT) {
		/* connect(): the connecting process owns the socket from now on. */
		if (!current_owner(&cur))
			return;
		o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
		cur.flags = (o ? o->flags : 0) | HERON_NET_F_OUT;
		bpf_map_update_elem(&heron_net_socks, &cookie, &cur, BPF_ANY);
		return;
	}
	if (newstate == H_TCP_SYN_RECV && oldstate == H_TCP_LISTEN) {
		/* A new child of a listener, in softirq: give it the listener's owner. */
		struct heron_net_listen_key lk = {};
		lk.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		lk.port = lport;
		struct heron_net_listener *l = bpf_map_lookup_elem(&heron_net_listeners, &lk);
		if (l) {
			cur = l->owner;
			cur.flags = HERON_NET_F_IN | HERON_NET_F_INHERITED;
		} else {
			/* Owner unknown (tgid 0): the first process to send or receive takes it. */
			cur.flags = HERON_NET_F_IN | HERON_NET_F_INHERITED;
			stat_add(HERON_NET_STAT_NO_LISTENER);
		}
		bpf_map_update_elem(&heron_net_socks, &cookie, &cur, BPF_ANY);
		return;
	}
	if (newstate == H_TCP_LISTEN) {
		if (!current_owner(&cur))
			return;
		cur.flags = HERON_NET_F_LISTENER;
		bpf_map_update_elem(&heron_net_socks, &cookie, &cur, BPF_ANY);
		if (lport) {
			struct heron_net_listen_key lk = {};
			lk.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
			lk.port = lport;
			struct heron_net_listener l = {.cookie = cookie, .owner = cur};
			if (bpf_map_update_elem(&heron_net_listeners, &lk, &l, BPF_ANY))
				stat_add(HERON_NET_STAT_LISTENERS_FULL);
		}
		__u8 addr[16];
		sk_local(sk, family, addr);
		emit_sock_event(HERON_NET_EV_LISTEN, HERON_NET_R_OPEN, cookie, &cur, addr, lport, H_PROTO_TCP);
		return;
	}
	if (newstate != H_TCP_CLOSE || oldstate == H_TCP_CLOSE)
		return;
	o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
	if (oldstate == H_TCP_LISTEN) {
		struct heron_net_owner copy = {};
		if (o)
			copy = *o;
		struct heron_net_listen_key lk = {};
		lk.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		lk.port = lport;
		struct heron_net_listener *l = bpf_map_lookup_elem(&heron_net_listeners, &lk);
		if (l && l->cookie == cookie)
			bpf_map_delete_elem(&heron_net_listeners, &lk);
		__u8 addr[16];
		sk_local(sk, family, addr);
		emit_sock_event(HERON_NET_EV_LISTEN, 0, cookie, &copy, addr, lport, H_PROTO_TCP);
		bpf_map_delete_elem(&heron_net_socks, &cookie);
		return;
	}
	/* The connection is over: its final counters go to user space, its entries go away. */
	int active = o && (o->flags & HERON_NET_F_OUT);
	bpf_map_delete_elem(&heron_net_socks, &cookie);
	struct heron_net_flow_close *e = bpf_ringbuf_reserve(&heron_net_events, sizeof(*e), 0);
	if (!e) {
		stat_add(HERON_NET_STAT_LOST);
		return;
	}
	__builtin_memset(&e->key, 0, sizeof(e->key));
	e->key.cookie = cookie;
	sk_remote(sk, family, e->key.raddr);
	e->key.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->key.proto = H_PROTO_TCP;
	e->hdr.kind = HERON_NET_EV_FLOW_CLOSE;
	e->hdr.flags = 0;
	e->hdr.ts_boot_ns = bpf_ktime_get_boot_ns();
	struct heron_net_counters *c = bpf_map_lookup_elem(&heron_net_flows, &e->key);
	if (c) {
		e->counters = *c;
		bpf_map_delete_elem(&heron_net_flows, &e->key);
		tcp_totals(sk, active, &e->counters, e);
	} else {
		__builtin_memset(&e->counters, 0, sizeof(e->counters));
		e->hdr.flags = HERON_NET_R_NO_FLOW;
		e->tcp_bytes_out = 0;
		e->tcp_bytes_in = 0;
	}
	bpf_ringbuf_submit(e, 0);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(heron_n_state_b, const struct sock *sk, const int oldstate, const int newstate)
{
	if (sk->sk_protocol != H_PROTO_TCP)
		return 0;
	on_state(sk, bpf_get_socket_cookie((void *)sk), oldstate, newstate);
	return 0;
}

/* Fallback where tp_btf is refused: no cookie helper on an untyped pointer, so the cookie is
 * read from the socket, and one that was never given a cookie (a new accepted socket) is
 * skipped (its traffic is counted as unowned). */
SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(heron_n_state_r, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != H_PROTO_TCP)
		return 0;
	__u64 cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	on_state(sk, cookie, oldstate, newstate);
	return 0;
}

/* The first process to use an accepted socket owns it (when the listener's owner hands
 * connections to other processes). */
static __always_inline void on_use(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != H_AF_INET && family != H_AF_INET6)
		return;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct heron_net_owner *o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
	if (!o || !(o->flags & HERON_NET_F_INHERITED))
		return;
	__sync_fetch_and_and(&o->flags, ~HERON_NET_F_INHERITED);
	struct heron_net_owner cur = {};
	if (!current_owner(&cur) || cur.tgid == o->tgid)
		return;
	o->tgid = cur.tgid;
	o->uid = cur.uid;
	o->start_boottime_ns = cur.start_boottime_ns;
	cur.flags = o->flags;
	__u8 addr[16];
	sk_local(sk, family, addr);
	emit_sock_event(HERON_NET_EV_OWNER, 0, cookie, &cur, addr, BPF_CORE_READ(sk, __sk_common.skc_num),
			BPF_CORE_READ(sk, sk_protocol));
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(heron_n_send, struct sock *sk, int ret, int flags)
{
	on_use(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(heron_n_recv, struct sock *sk, int ret, int flags)
{
	on_use(sk);
	return 0;
}

/* -- per packet ------------------------------------------------------------------------------ */

struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 proto;
	__u32 payload_off;
	__u32 seq;
	__u32 tcp_flags;
};

/* Reads the IP and L4 headers; 0 when the packet is not TCP/UDP over IPv4/IPv6. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[H_HDR_MAX];
	__u32 len = skb->len;
	__u32 l4;

	if (len > H_HDR_MAX)
		len = H_HDR_MAX;
	if (len < 28)
		return 0;
	if (bpf_skb_load_bytes(skb, 0, h, len & 0x3f) < 0)
		return 0;
	if ((h[0] >> 4) == 4) {
		__u32 ihl = (h[0] & 0xf) * 4;
		p->proto = h[9];
		mapped_v4(p->saddr, *(__u32 *)&h[12]);
		mapped_v4(p->daddr, *(__u32 *)&h[16]);
		if (ihl < 20)
			return 0;
		l4 = ihl;
	} else if ((h[0] >> 4) == 6) {
		if (len < 48)
			return 0;
		__u8 nh = h[6];
		__builtin_memcpy(p->saddr, &h[8], 16);
		__builtin_memcpy(p->daddr, &h[24], 16);
		l4 = 40;
		/* Extension headers: BIG TCP's hop-by-hop jumbo option, routing, destination, fragment. */
#pragma unroll
		for (int i = 0; i < H_V6_EXT_MAX; i++) {
			if (nh != 0 && nh != 43 && nh != 60 && nh != 44)
				break;
			__u8 eh[2];
			if (bpf_skb_load_bytes(skb, l4 & 0x1fff, eh, 2) < 0)
				return 0;
			l4 += nh == 44 ? 8 : ((__u32)eh[1] + 1) * 8;
			nh = eh[0];
		}
		p->proto = nh;
	} else {
		return 0;
	}
	if (p->proto != H_PROTO_TCP && p->proto != H_PROTO_UDP) {
		stat_add(HERON_NET_STAT_UNPARSED);
		return 0;
	}
	__u8 t[20];
	if (bpf_skb_load_bytes(skb, l4 & 0x3fff, t, p->proto == H_PROTO_TCP ? 20 : 8) < 0)
		return 0;
	p->sport = ((__u16)t[0] << 8) | t[1];
	p->dport = ((__u16)t[2] << 8) | t[3];
	if (p->proto == H_PROTO_TCP) {
		p->seq = ((__u32)t[4] << 24) | ((__u32)t[5] << 16) | ((__u32)t[6] << 8) | t[7];
		p->payload_off = l4 + (t[12] >> 4) * 4;
		p->tcp_flags = t[13];
	} else {
		p->tcp_flags = 0;
		p->seq = 0;
		p->payload_off = l4 + 8;
	}
	return 1;
}

static __always_inline int is_dns_port(__u16 port)
{
	__u32 zero = 0;
	struct heron_net_ports *ports = bpf_map_lookup_elem(&heron_net_dnsports, &zero);
	if (!ports)
		return 0;
	return ports->bits[(port >> 3) & (HERON_NET_DNS_PORTS_BYTES - 1)] & (1 << (port & 7));
}

static __always_inline void emit_dns(struct __sk_buff *skb, struct heron_net_flow_key *key,
				     struct heron_net_owner *o, struct pkt *p, int egress, __u32 payload)
{
	struct heron_net_dns *e = bpf_ringbuf_reserve(&heron_net_events, sizeof(*e), 0);
	if (!e) {
		stat_add(HERON_NET_STAT_LOST);
		return;
	}
	__u32 n = payload;
	e->hdr.kind = HERON_NET_EV_DNS;
	e->hdr.flags = egress ? 0 : HERON_NET_R_IN;
	if (n > HERON_NET_DNS_MAX) {
		n = HERON_NET_DNS_MAX;
		e->hdr.flags |= HERON_NET_R_CUT;
	}
	e->hdr.ts_boot_ns = bpf_ktime_get_boot_ns();
	e->key = *key;
	e->owner = *o;
	__builtin_memcpy(e->laddr, egress ? p->saddr : p->daddr, 16);
	e->lport = egress ? p->sport : p->dport;
	e->tcp_seq = p->seq;
	e->payload_len = payload;
	e->_pad = 0;
	__u64 len = n;
	asm volatile("" : "+r"(len)); /* keep the bound checks below on the register the helper gets */
	if (len == 0 || len > HERON_NET_DNS_MAX ||
	    bpf_skb_load_bytes(skb, p->payload_off & 0x3fff, e->data, len) < 0) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	e->len = n;
	stat_add(HERON_NET_STAT_DNS);
	bpf_ringbuf_submit(e, 0);
}

/* The payload bytes of an outgoing TCP segment that were not sent before (a retransmission, a
 * keepalive or window probe adds nothing). Only egress: this host chooses its sequence numbers,
 * whereas a mark moved by incoming segments could be pushed ahead by one forged out-of-window
 * segment and then hide the real data. Egress segments of one socket are sent one at a time
 * (under the socket's lock), so plain stores are enough. */
static __always_inline __u32 tcp_new_bytes_out(struct heron_net_counters *c, __u32 seq, __u32 len)
{
	__u32 end = seq + len;
	__u32 *hw = &c->tcp_end_out;
	__u8 *seen = &c->tcp_seen_out;
	if (!*seen) {
		*seen = 1;
		*hw = end;
		return len;
	}
	__s32 ahead = (__s32)(end - *hw);
	if (ahead <= 0)
		return 0;
	*hw = end;
	return (__u32)ahead < len ? (__u32)ahead : len;
}

static __always_inline int on_skb(struct __sk_buff *skb, int egress)
{
	struct bpf_sock *sk = skb->sk;
	if (!sk)
		return 1;
	__u32 state = sk->state;
	if (state == H_TCP_LISTEN || state == H_TCP_NEW_SYN_RECV)
		return 1; /* handshake packets of a listener: the connection is counted on its own socket */
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct heron_net_owner *o = bpf_map_lookup_elem(&heron_net_socks, &cookie);
	if (!o) {
		stat_add(HERON_NET_STAT_UNOWNED);
		return 1;
	}
	struct pkt p;
	if (!parse(skb, &p))
		return 1;
	struct heron_net_flow_key key = {};
	key.cookie = cookie;
	key.proto = p.proto;
	if (egress) {
		__builtin_memcpy(key.raddr, p.daddr, 16);
		key.rport = p.dport;
	} else {
		__builtin_memcpy(key.raddr, p.saddr, 16);
		key.rport = p.sport;
	}
	__u32 payload = skb->len > p.payload_off ? skb->len - p.payload_off : 0;
	__u32 segs = skb->gso_segs ? skb->gso_segs : 1;
	__u64 now = bpf_ktime_get_boot_ns();

	struct heron_net_counters *c = bpf_map_lookup_elem(&heron_net_flows, &key);
	if (!c && p.proto == H_PROTO_UDP) {
		/* A new peer of a UDP socket: past HERON_NET_UDP_MAX_PEERS (a server answering many
		 * clients, or a scan), fold it into the socket's wildcard flow so one socket cannot
		 * fill heron_net_flows. */
		if ((o->flags >> 32) >= HERON_NET_UDP_MAX_PEERS) {
			if (key.raddr[10] == 0xff && key.raddr[11] == 0xff)
				__builtin_memset(key.raddr + 12, 0, 4); /* IPv4: 0.0.0.0 */
			else
				__builtin_memset(key.raddr, 0, 16);     /* IPv6: :: */
			key.rport = 0;
			stat_add(HERON_NET_STAT_UDP_PEERS_FOLDED);
			c = bpf_map_lookup_elem(&heron_net_flows, &key);
		} else {
			__sync_fetch_and_add(&o->flags, HERON_NET_PEER_ONE);
		}
	}
	if (!c) {
		struct heron_net_counters zero = {.first_ns = now, .last_ns = now};
		long err = bpf_map_update_elem(&heron_net_flows, &key, &zero, BPF_NOEXIST);
		if (err == 0) {
			__u32 dir_in = p.proto == H_PROTO_TCP ? (o->flags & HERON_NET_F_IN) != 0 : !egress;
			if (!(o->flags & HERON_NET_F_HAS_FLOW))
				__sync_fetch_and_or(&o->flags, HERON_NET_F_HAS_FLOW);
			struct heron_net_flow_open *e = bpf_ringbuf_reserve(&heron_net_events, sizeof(*e), 0);
			if (e) {
				e->hdr.kind = HERON_NET_EV_FLOW_OPEN;
				e->hdr.flags = dir_in ? HERON_NET_R_IN : 0;
				e->hdr.ts_boot_ns = now;
				e->key = key;
				e->owner = *o;
				__builtin_memcpy(e->laddr, egress ? p.saddr : p.daddr, 16);
				e->lport = egress ? p.sport : p.dport;
				__builtin_memset(e->_pad, 0, sizeof(e->_pad));
				bpf_ringbuf_submit(e, 0);
			} else {
				stat_add(HERON_NET_STAT_LOST);
			}
		} else if (err != -17 /* EEXIST: another CPU created it */) {
			stat_add(HERON_NET_STAT_FLOWS_FULL);
			return 1;
		}
		c = bpf_map_lookup_elem(&heron_net_flows, &key);
		if (!c)
			return 1;
	}
	__u32 dns_payload = payload;
	/* TCP ingress: every payload byte as it arrives (retransmissions included); FLOW_CLOSE
	 * carries the kernel's exact totals. */
	if (p.proto == H_PROTO_TCP) {
		if (p.tcp_flags & 1 /* FIN */) {
			/* Where each side's FIN ends, for the totals at CLOSE (a forged one is ignored
			 * there: it must match what the kernel acknowledged or took). */
			if (egress) {
				c->tcp_fin_out = p.seq + payload + 1;
				c->tcp_fins |= 1;
			} else {
				c->tcp_fin_in = p.seq + payload + 1;
				c->tcp_fins |= 2;
			}
		}
		if (egress)
			payload = tcp_new_bytes_out(c, p.seq, payload);
	}
	if (egress) {
		__sync_fetch_and_add(&c->bytes_out, payload);
		__sync_fetch_and_add(&c->packets_out, segs);
	} else {
		__sync_fetch_and_add(&c->bytes_in, payload);
		__sync_fetch_and_add(&c->packets_in, segs);
	}
	c->last_ns = now;
	if (dns_payload && is_dns_port(key.rport))
		emit_dns(skb, &key, o, &p, egress, dns_payload);
	return 1;
}

SEC("cgroup_skb/egress")
int heron_n_egress(struct __sk_buff *skb)
{
	return on_skb(skb, 1);
}

SEC("cgroup_skb/ingress")
int heron_n_ingress(struct __sk_buff *skb)
{
	return on_skb(skb, 0);
}

/* -- start-up snapshot: every TCP/UDP socket open in any process, in any namespace ------------- */

SEC("iter/task_file")
int heron_n_iter(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	struct socket *sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	struct sock *sk = sock->sk;
	if (!sk)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if ((family != H_AF_INET && family != H_AF_INET6) || (proto != H_PROTO_TCP && proto != H_PROTO_UDP))
		return 0;
	struct heron_net_iter_sock r = {};
	r.cookie = bpf_get_socket_cookie(sk);
	r.start_boottime_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	r.tgid = BPF_CORE_READ(task, tgid);
	r.uid = BPF_CORE_READ(task, cred, uid.val);
	r.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	r.family = family;
	r.proto = proto;
	r.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	r.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	r.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	sk_local(sk, family, r.laddr);
	sk_remote(sk, family, r.raddr);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
