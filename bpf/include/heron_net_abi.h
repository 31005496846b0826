/* Records and map layouts of bpf/net.bpf.c (the network.ebpf source), shared with Python.
 *
 * src/heron/agent/ebpf/net_objects.py mirrors these layouts; tests/agent/ebpf/test_net_object.py
 * checks the mirror against the BTF of the built object. Raise HERON_NET_ABI_VERSION when a field
 * changes meaning, size or place. Every struct is laid out by hand without implicit padding,
 * little endian, fixed-width types only. Addresses are 16 bytes: IPv4 as ::ffff:a.b.c.d.
 */
#ifndef HERON_NET_ABI_H
#define HERON_NET_ABI_H

#define HERON_NET_ABI_VERSION 2

/* kind: the first field of every ring-buffer record. */
#define HERON_NET_EV_FLOW_OPEN 1   /* first packet of a (socket, peer) pair */
#define HERON_NET_EV_FLOW_CLOSE 2  /* TCP socket reached CLOSE: final counters */
#define HERON_NET_EV_RELEASE 3     /* a UDP socket was closed (user space finishes its flows) */
#define HERON_NET_EV_LISTEN 4      /* a socket started or stopped listening */
#define HERON_NET_EV_OWNER 5       /* an accepted socket's first user is not the listener's owner */
#define HERON_NET_EV_DNS 6         /* payload of a packet to/from a DNS port */

/* heron_net_owner.flags */
#define HERON_NET_F_OUT 0x1        /* TCP: this host connected */
#define HERON_NET_F_IN 0x2         /* TCP: accepted from a listener */
#define HERON_NET_F_INHERITED 0x4  /* owner copied from the listener: refined at first send/recv */
#define HERON_NET_F_LISTENER 0x8   /* TCP socket in LISTEN */
#define HERON_NET_F_UDP_BOUND 0x10 /* UDP socket bound with bind(): reported as listening */
#define HERON_NET_F_SNAPSHOT 0x40  /* found by the start-up iterator, not seen being created */
#define HERON_NET_F_HAS_FLOW 0x80  /* at least one flow entry exists (UDP release is reported) */
#define HERON_NET_PEER_ONE (1ULL << 32)   /* heron_net_owner.flags: one UDP peer */
#define HERON_NET_UDP_MAX_PEERS 256       /* past this many, a UDP socket's new peers share one
					   * wildcard flow (remote address ::, port 0) */

/* record flags */
#define HERON_NET_R_IN 0x1         /* FLOW_OPEN: incoming flow; DNS: ingress packet */
#define HERON_NET_R_OPEN 0x2       /* LISTEN: started (else stopped) */
#define HERON_NET_R_NO_FLOW 0x4    /* FLOW_CLOSE: no counters were found for the socket */
#define HERON_NET_R_CUT 0x8        /* DNS: payload longer than HERON_NET_DNS_MAX, cut */
#define HERON_NET_R_TCP_TOTALS 0x10 /* FLOW_CLOSE: tcp_bytes_out/in hold the kernel's exact totals */

/* Slots of the per-CPU heron_net_stats array. */
#define HERON_NET_STAT_LOST 0        /* ring-buffer records dropped (ring full) */
#define HERON_NET_STAT_UNOWNED 1     /* packets of sockets with no owner entry (kernel sockets...) */
#define HERON_NET_STAT_FLOWS_FULL 2  /* new flows not counted: heron_net_flows full */
#define HERON_NET_STAT_UNPARSED 3    /* packets of owned sockets that are not TCP/UDP (or past 4 IPv6 ext headers) */
#define HERON_NET_STAT_NO_LISTENER 4 /* accepted sockets whose listener's owner was unknown */
#define HERON_NET_STAT_DNS 5         /* DNS payloads handed to user space */
#define HERON_NET_STAT_LISTENERS_FULL 6 /* listening sockets not recorded: heron_net_listeners full */
#define HERON_NET_STAT_UDP_PEERS_FOLDED 7 /* UDP packets folded into a socket's wildcard peer (too many peers) */
#define HERON_NET_STAT_COUNT 8

#define HERON_NET_DNS_MAX 1024       /* DNS payload bytes copied per packet */
#define HERON_NET_DNS_PORTS_BYTES 8192 /* bitmap of the 65,536 ports treated as DNS */

/* Who owns a socket: value of heron_net_socks (key: socket cookie). */
struct heron_net_owner {
	__u64 start_boottime_ns; /* task->group_leader->start_boottime: with tgid, the process key */
	__u32 tgid;              /* 0: unknown */
	__u32 uid;
	__u64 flags;             /* HERON_NET_F_* in bits 0-31; UDP: distinct peers seen in bits 32-63
				  * (64 bits: updated with 64-bit atomics) */
};

/* One (socket, peer) pair: key of heron_net_flows. TCP has one peer per socket. */
struct heron_net_flow_key {
	__u64 cookie;
	__u8 raddr[16];
	__u16 rport; /* host order */
	__u8 proto;
	__u8 _pad[5];
};

/* Cumulative counters of one flow since its first packet: L4 payload bytes (TCP/UDP headers
 * excluded), packets as the wire sees them (GSO segments, retransmissions included). TCP egress
 * bytes are counted once per sequence number (a retransmission adds nothing: tcp_end_out);
 * TCP ingress bytes are every payload byte received (retransmissions and segments outside the
 * window included: a peer decides what it sends), corrected at CLOSE by the kernel's own totals
 * (heron_net_flow_close.tcp_bytes_in/out). */
struct heron_net_counters {
	__u64 bytes_out;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 packets_in;
	__u64 first_ns; /* bpf_ktime_get_boot_ns() of the first and last packet */
	__u64 last_ns;
	__u32 tcp_end_out; /* TCP: highest sequence number + 1 sent */
	__u32 tcp_fin_out; /* TCP: sequence number after this side's FIN */
	__u32 tcp_fin_in;  /* TCP: sequence number after the last FIN received */
	__u8 tcp_seen_out; /* tcp_end_out is set */
	__u8 tcp_fins;     /* 1: tcp_fin_out is set, 2: tcp_fin_in is set */
	__u8 _pad[2];
};

/* Key of heron_net_listeners: a TCP listening port in one network namespace. */
struct heron_net_listen_key {
	__u32 netns; /* inode number of the namespace */
	__u16 port;
	__u16 _pad;
};

struct heron_net_listener {
	__u64 cookie;
	struct heron_net_owner owner;
};

struct heron_net_hdr {
	__u32 kind;
	__u32 flags; /* HERON_NET_R_* */
	__u64 ts_boot_ns;
};

struct heron_net_flow_open {
	struct heron_net_hdr hdr;
	struct heron_net_flow_key key;
	struct heron_net_owner owner;
	__u8 laddr[16];
	__u16 lport;
	__u16 _pad[3];
};

/* counters: as counted per packet. With HERON_NET_R_TCP_TOTALS, tcp_bytes_out/in are the
 * kernel's tcp_sock bytes_acked/bytes_received less the sequence numbers SYN and FIN use: the
 * exact payload the peer acknowledged and this host received in order. */
struct heron_net_flow_close {
	struct heron_net_hdr hdr;
	struct heron_net_flow_key key;
	struct heron_net_counters counters;
	__u64 tcp_bytes_out;
	__u64 tcp_bytes_in;
};

/* RELEASE, OWNER and LISTEN records. */
struct heron_net_sock_event {
	struct heron_net_hdr hdr;
	__u64 cookie;
	struct heron_net_owner owner;
	__u8 addr[16]; /* LISTEN, RELEASE: local address */
	__u16 port;    /* local port */
	__u8 proto;
	__u8 _pad[5];
};

struct heron_net_dns {
	struct heron_net_hdr hdr;
	struct heron_net_flow_key key;
	struct heron_net_owner owner;
	__u8 laddr[16];
	__u16 lport;
	__u16 len;         /* bytes in data */
	__u32 tcp_seq;     /* TCP: sequence number of the first payload byte */
	__u32 payload_len; /* the packet's whole L4 payload */
	__u32 _pad;
	__u8 data[HERON_NET_DNS_MAX];
};

/* One socket open in one process, written by the start-up iterator (iter/task_file). */
struct heron_net_iter_sock {
	__u64 cookie;
	__u64 start_boottime_ns;
	__u32 tgid;
	__u32 uid;
	__u32 netns;
	__u16 family;
	__u8 proto;
	__u8 state;  /* TCP state (10 = LISTEN); UDP: 7 unconnected, 1 connected */
	__u16 lport; /* host order */
	__u16 rport;
	__u32 _pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

#endif /* HERON_NET_ABI_H */
