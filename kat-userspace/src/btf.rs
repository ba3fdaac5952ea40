//! Struct offsets and enum values of the running kernel, from its BTF.
//!
//! The eBPF programs carry no CO-RE relocations: every field they read is
//! located here, at start-up, and handed to them in `Config`.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context as _, Result};
use btfparse::{Integer32Value, Offset, Readable, TypeInformation, TypeVariant};
use kat_common::{Field, Offsets};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(src) => {
                buffer.copy_from_slice(src);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::EOF,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// Parsed kernel BTF.
pub struct KernelBtf {
    types: TypeInformation,
}

impl KernelBtf {
    pub fn from_bytes(data: Vec<u8>) -> Result<Self> {
        let types =
            TypeInformation::new(&Bytes(data)).map_err(|e| anyhow!("cannot parse BTF: {e:?}"))?;
        Ok(Self { types })
    }

    pub fn from_file(path: &str) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| {
            format!("cannot read {path}: kat needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")
        })?;
        Self::from_bytes(data)
    }

    pub fn from_running_kernel() -> Result<Self> {
        Self::from_file(VMLINUX)
    }

    /// Where `path` is inside `ty`, checking that the field is as wide as
    /// the `T` the programs read (the `Offsets` declaration says which).
    fn field<T>(&self, ty: &str, path: &str) -> Result<Field<T>> {
        let what = || format!("{ty}.{path}");
        let tid = self
            .types
            .id_of(ty)
            .ok_or_else(|| anyhow!("this kernel's BTF has no type `{ty}`"))?;
        let (field_tid, offset) = self
            .types
            .offset_of(tid, path)
            .map_err(|e| anyhow!("this kernel's BTF has no field {}: {e:?}", what()))?;
        let offset = match offset {
            Offset::ByteOffset(o) => o,
            Offset::BitOffsetAndSize(..) => {
                bail!(
                    "{} is a bit field on this kernel; kat cannot read it",
                    what()
                )
            }
        };
        let size = self
            .types
            .size_of(field_tid)
            .map_err(|e| anyhow!("cannot size {}: {e:?}", what()))?;
        let field = Field::at(offset);
        if size != field.width() {
            bail!(
                "{} is {size} bytes on this kernel, kat expects {}: its type changed",
                what(),
                field.width()
            );
        }
        Ok(field)
    }

    /// All offsets the programs need.
    pub fn offsets(&self) -> Result<Offsets> {
        let socket_in_alloc = self.struct_member_offset("socket_alloc", "socket")?;
        let inode_in_alloc = self.struct_member_offset("socket_alloc", "vfs_inode")?;
        let i_ino: Field<u64> = self.field("inode", "i_ino")?;
        Ok(Offsets {
            timer_function: self.field("timer_list", "function")?,
            keepalive_timer: Field::at(self.keepalive_timer()?),
            retransmit_timer: Field::at(self.retransmit_timer_member().map_or(0, |(_, o)| o)),
            skc_family: self.field("sock", "__sk_common.skc_family")?,
            skc_state: self.field("sock", "__sk_common.skc_state")?,
            inet_sport: self.field("inet_sock", "inet_sport")?,
            skc_num: self.field("sock", "__sk_common.skc_num")?,
            skc_dport: self.field("sock", "__sk_common.skc_dport")?,
            skc_rcv_saddr: self.field("sock", "__sk_common.skc_rcv_saddr")?,
            skc_daddr: self.field("sock", "__sk_common.skc_daddr")?,
            skc_v6_rcv_saddr: self.field("sock", "__sk_common.skc_v6_rcv_saddr")?,
            skc_v6_daddr: self.field("sock", "__sk_common.skc_v6_daddr")?,
            skc_net: self.field("sock", "__sk_common.skc_net.net")?,
            net_inum: self.field("net", "ns.inum")?,
            net_ka_time: self.field("net", "ipv4.sysctl_tcp_keepalive_time")?,
            net_ka_intvl: self.field("net", "ipv4.sysctl_tcp_keepalive_intvl")?,
            net_ka_probes: self.field("net", "ipv4.sysctl_tcp_keepalive_probes")?,
            // Moved into sock_common in 6.x; plain sk_flags before.
            sk_flags: self
                .field("sock", "__sk_common.skc_flags")
                .or_else(|_| self.field("sock", "sk_flags"))?,
            sk_protocol: self.field("sock", "sk_protocol")?,
            sk_err: self.field("sock", "sk_err")?,
            sk_err_soft: self.field("sock", "sk_err_soft")?,
            sk_shutdown: self.field("sock", "sk_shutdown")?,
            sk_uid: self.field("sock", "sk_uid")?,
            sk_socket: self.field("sock", "sk_socket")?,
            socket_ino: Field::at(
                inode_in_alloc
                    .checked_sub(socket_in_alloc)
                    .ok_or_else(|| anyhow!("socket_alloc: inode placed before socket"))?
                    + i_ino.offset,
            ),
            icsk_probes_out: self.field("inet_connection_sock", "icsk_probes_out")?,
            icsk_user_timeout: self.field("inet_connection_sock", "icsk_user_timeout")?,
            icsk_lrcvtime: self.field("inet_connection_sock", "icsk_ack.lrcvtime")?,
            tp_rcv_tstamp: self.field("tcp_sock", "rcv_tstamp")?,
            tp_lsndtime: self.field("tcp_sock", "lsndtime")?,
            tp_srtt_us: self.field("tcp_sock", "srtt_us")?,
            tp_retrans_stamp: self.field("tcp_sock", "retrans_stamp")?,
            tp_mstamp: self.field("tcp_sock", "tcp_mstamp")?,
            tp_packets_out: self.field("tcp_sock", "packets_out")?,
            tp_ka_time: self.field("tcp_sock", "keepalive_time")?,
            tp_ka_intvl: self.field("tcp_sock", "keepalive_intvl")?,
            tp_ka_probes: self.field("tcp_sock", "keepalive_probes")?,
            iter_meta_seq: self.field("bpf_iter_meta", "seq")?,
            task_tgid: self.field("task_struct", "tgid")?,
            task_comm: self.field("task_struct", "comm")?,
            file_inode: self.field("file", "f_inode")?,
            inode_mode: self.field("inode", "i_mode")?,
            inode_ino: i_ino,
        })
    }

    /// Where the keepalive timer lives in a TCP socket: a timer of its own
    /// in inet_connection_sock on recent kernels (also stable backports),
    /// the generic sk_timer before. Layout alone tells which.
    fn keepalive_timer(&self) -> Result<u32> {
        self.keepalive_timer_member().map(|(_, offset)| offset)
    }

    /// The member that holds the retransmission timer, and its offset in
    /// the socket: inet_connection_sock's own, or (7.x) one of `sock`'s,
    /// in a union with sk_timer. None where neither is: the retransmission
    /// timer's fallback for a skipped CLOSE is then off, never guessed.
    pub fn retransmit_timer_member(&self) -> Option<(&'static str, u32)> {
        const WHERE: [(&str, &str, &str); 2] = [
            (
                "inet_connection_sock",
                "icsk_retransmit_timer",
                "inet_connection_sock.icsk_retransmit_timer",
            ),
            ("sock", "tcp_retransmit_timer", "sock.tcp_retransmit_timer"),
        ];
        WHERE.into_iter().find_map(|(ty, member, name)| {
            self.struct_member_offset(ty, member)
                .ok()
                .map(|o| (name, o))
        })
    }

    /// The member that holds the keepalive timer on this kernel, and its
    /// offset in the socket.
    pub fn keepalive_timer_member(&self) -> Result<(&'static str, u32)> {
        self.struct_member_offset("inet_connection_sock", "icsk_keepalive_timer")
            .map(|o| ("inet_connection_sock.icsk_keepalive_timer", o))
            .or_else(|_| {
                self.struct_member_offset("sock", "sk_timer")
                    .map(|o| ("sock.sk_timer", o))
            })
    }

    /// Offset of a member whose size kat does not read (an embedded struct).
    fn struct_member_offset(&self, ty: &str, path: &str) -> Result<u32> {
        let tid = self
            .types
            .id_of(ty)
            .ok_or_else(|| anyhow!("this kernel's BTF has no type `{ty}`"))?;
        match self.types.offset_of(tid, path) {
            Ok((_, Offset::ByteOffset(o))) => Ok(o),
            Ok(_) => bail!("{ty}.{path} is a bit field on this kernel"),
            Err(e) => bail!("this kernel's BTF has no field {ty}.{path}: {e:?}"),
        }
    }

    /// Name → value of a C enum, or None when the kernel has no such enum.
    pub fn enum_values(&self, name: &str) -> Option<BTreeMap<String, u32>> {
        let tid = self.types.id_of(name)?;
        match self.types.from_id(tid)? {
            TypeVariant::Enum(e) => Some(
                e.named_value_list()
                    .iter()
                    .map(|v| {
                        let value = match v.value {
                            Integer32Value::Signed(s) => s as u32,
                            Integer32Value::Unsigned(u) => u,
                        };
                        (v.name.clone(), value)
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// A named constant of any enum, named or anonymous (LINUX_MIB_* live
    /// in an anonymous one).
    pub fn enum_constant(&self, name: &str) -> Option<u32> {
        self.types.get().values().find_map(|t| match t {
            TypeVariant::Enum(e) => e
                .named_value_list()
                .iter()
                .find(|v| v.name == name)
                .map(|v| match v.value {
                    Integer32Value::Signed(s) => s as u32,
                    Integer32Value::Unsigned(u) => u,
                }),
            _ => None,
        })
    }

    /// How many parameters a kernel function has, per its BTF prototype.
    pub fn func_params(&self, name: &str) -> Option<usize> {
        let TypeVariant::Func(f) = self.types.from_id(self.types.id_of(name)?)? else {
            return None;
        };
        match self.types.from_id(*f.prototype_tid())? {
            TypeVariant::FuncProto(p) => Some(p.parameter_list().len()),
            _ => None,
        }
    }

    /// Bit number of SOCK_KEEPOPEN in `sk_flags`.
    pub fn keepopen_bit(&self) -> Result<u32> {
        self.enum_values("sock_flags")
            .and_then(|v| v.get("SOCK_KEEPOPEN").copied())
            .ok_or_else(|| anyhow!("this kernel's BTF has no enum sock_flags::SOCK_KEEPOPEN"))
    }

    /// Reset reasons by value, names without the `SK_RST_REASON_` prefix;
    /// None on kernels before reset reasons (< 6.10).
    pub fn reset_reasons(&self) -> Option<BTreeMap<u32, String>> {
        let values = self.enum_values("sk_rst_reason")?;
        Some(
            values
                .into_iter()
                .map(|(name, v)| {
                    let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
                    (v, short.to_string())
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_btf_gets_a_clear_error() {
        let err = KernelBtf::from_file("/nonexistent/vmlinux")
            .err()
            .expect("error");
        let msg = format!("{err:#}");
        assert!(msg.contains("CONFIG_DEBUG_INFO_BTF=y"), "{msg}");
        let err = KernelBtf::from_bytes(vec![0xde, 0xad])
            .err()
            .expect("error");
        assert!(format!("{err:#}").contains("cannot parse BTF"));
    }

    /// The running kernel's BTF resolves every field kat reads. Needs only
    /// a readable /sys/kernel/btf/vmlinux, which CI machines have.
    #[test]
    fn resolves_the_running_kernels_offsets() {
        if !std::path::Path::new(VMLINUX).exists() {
            assert!(
                std::env::var("CI").is_err(),
                "CI machines must have {VMLINUX}"
            );
            eprintln!("SKIPPED: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::from_running_kernel().expect("parse");
        let o = btf.offsets().expect("offsets");
        // Struct sock starts with sock_common: family and state are early.
        assert!(o.skc_family.offset < 32 && o.skc_state.offset < 32, "{o:?}");
        assert!(o.skc_num.offset < 32 && o.skc_dport.offset < 32, "{o:?}");
        assert!(
            o.keepalive_timer.offset > 0 && o.tp_ka_time.offset > o.keepalive_timer.offset,
            "{o:?}"
        );
        assert!(o.tp_ka_time.offset > o.icsk_probes_out.offset, "{o:?}");
        assert!(btf.keepopen_bit().expect("SOCK_KEEPOPEN") < 64);
        // Kernels before 6.10 have no reset reasons; where there are, their
        // names are read without the enum's prefix.
        if let Some(reasons) = btf.reset_reasons() {
            assert!(reasons.values().any(|n| n == "TCP_KEEPALIVE_TIMEOUT"));
            assert!(reasons.values().all(|n| !n.starts_with("SK_RST_REASON_")));
        }
    }

    /// A minimal BTF blob builder: just the kinds the fixtures need.
    #[derive(Default)]
    struct Fixture {
        types: Vec<u32>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                strings: vec![0],
                ..Self::default()
            }
        }

        fn name(&mut self, n: &str) -> u32 {
            if n.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(n.as_bytes());
            self.strings.push(0);
            off
        }

        fn add(&mut self, words: Vec<u32>) -> u32 {
            self.types.extend(words);
            self.count += 1;
            self.count
        }

        fn int(&mut self, n: &str, size: u32) -> u32 {
            let name = self.name(n);
            self.add(vec![name, 1 << 24, size, size * 8])
        }

        /// kind 4 (struct) or 5 (union); members: (name, type id, byte offset).
        fn record(&mut self, kind: u32, n: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let name = self.name(n);
            let mut words = vec![name, kind << 24 | members.len() as u32, size];
            for &(m, ty, off) in members {
                let m = self.name(m);
                words.extend([m, ty, off * 8]);
            }
            self.add(words)
        }

        fn enumeration(&mut self, n: &str, values: &[(&str, u32)]) -> u32 {
            let name = self.name(n);
            let mut words = vec![name, 6 << 24 | values.len() as u32, 4];
            for &(v, val) in values {
                let v = self.name(v);
                words.extend([v, val]);
            }
            self.add(words)
        }

        fn func(&mut self, n: &str, params: &[u32]) -> u32 {
            let mut proto = vec![0, 13 << 24 | params.len() as u32, 0];
            for &p in params {
                proto.extend([0, p]);
            }
            let proto = self.add(proto);
            let name = self.name(n);
            self.add(vec![name, 12 << 24, proto])
        }

        fn build(self) -> KernelBtf {
            let type_len = (self.types.len() * 4) as u32;
            let mut out = Vec::new();
            out.extend(0xeb9f_u16.to_le_bytes());
            out.extend([1u8, 0]);
            for w in [24u32, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend(w.to_le_bytes());
            }
            for w in self.types {
                out.extend(w.to_le_bytes());
            }
            out.extend(self.strings);
            KernelBtf::from_bytes(out).expect("fixture parses")
        }
    }

    /// sock { u32 a; union { u64 skc_flags; u64 other; }; u16 proto; }
    fn sock_fixture(flags_size: u32) -> KernelBtf {
        let mut f = Fixture::new();
        let u16_t = f.int("u16", 2);
        let u32_t = f.int("u32", 4);
        let flags_t = f.int("flags_t", flags_size);
        let u64_t = f.int("u64", 8);
        let anon = f.record(5, "", 8, &[("skc_flags", flags_t, 0), ("other", u64_t, 0)]);
        f.record(
            4,
            "sock",
            24,
            &[("a", u32_t, 0), ("", anon, 8), ("proto", u16_t, 16)],
        );
        f.enumeration("sock_flags", &[("SOCK_DEAD", 0), ("SOCK_KEEPOPEN", 3)]);
        f.func("tcp_send_active_reset", &[u32_t, u32_t, u32_t]);
        f.build()
    }

    #[test]
    fn fixture_fields_resolve_through_anonymous_unions() {
        let btf = sock_fixture(8);
        let flags: Field<u64> = btf.field("sock", "skc_flags").expect("offset");
        assert_eq!(flags.offset, 8);
        let proto: Field<u16> = btf.field("sock", "proto").expect("offset");
        assert_eq!(proto.offset, 16);
        assert_eq!(btf.keepopen_bit().expect("bit"), 3);
        assert_eq!(btf.func_params("tcp_send_active_reset"), Some(3));
        assert_eq!(btf.func_params("no_such_function"), None);
        assert!(
            btf.reset_reasons().is_none(),
            "no sk_rst_reason in the fixture"
        );
    }

    #[test]
    fn fixture_errors_name_what_is_missing_or_changed() {
        let btf = sock_fixture(4);
        let err = btf
            .field::<u64>("sock", "skc_flags")
            .expect_err("size changed");
        assert!(
            format!("{err}").contains("sock.skc_flags is 4 bytes"),
            "{err}"
        );
        assert!(format!("{err}").contains("type changed"), "{err}");
        let err = btf.field::<u32>("sock", "sk_gone").expect_err("missing");
        assert!(format!("{err}").contains("no field sock.sk_gone"), "{err}");
        let err = btf.field::<u32>("tcp_sock", "x").expect_err("no type");
        assert!(format!("{err}").contains("no type `tcp_sock`"), "{err}");
    }

    #[test]
    fn keepalive_timer_is_found_where_the_kernel_keeps_it() {
        for own_timer in [true, false] {
            let mut f = Fixture::new();
            let timer = f.record(4, "timer_list", 40, &[]);
            let u32_t = f.int("u32", 4);
            f.record(4, "sock", 100, &[("a", u32_t, 0), ("sk_timer", timer, 48)]);
            let icsk: &[(&str, u32, u32)] = if own_timer {
                &[("b", u32_t, 100), ("icsk_keepalive_timer", timer, 200)]
            } else {
                &[("b", u32_t, 100)]
            };
            f.record(4, "inet_connection_sock", 300, icsk);
            let btf = f.build();
            let want = if own_timer { 200 } else { 48 };
            assert_eq!(btf.keepalive_timer().expect("timer"), want);
        }
    }

    #[test]
    fn the_retransmission_timer_is_found_by_name_or_not_at_all() {
        let kernel = |icsk: bool, sock: bool| {
            let mut f = Fixture::new();
            let timer = f.record(4, "timer_list", 40, &[]);
            let u32_t = f.int("u32", 4);
            let mut sock_members = vec![("a", u32_t, 0), ("sk_timer", timer, 48)];
            if sock {
                sock_members.push(("tcp_retransmit_timer", timer, 48));
            }
            f.record(4, "sock", 100, &sock_members);
            let mut icsk_members = vec![("b", u32_t, 100)];
            if icsk {
                icsk_members.push(("icsk_retransmit_timer", timer, 160));
            }
            f.record(4, "inet_connection_sock", 300, &icsk_members);
            f.build()
        };
        assert_eq!(
            kernel(true, false).retransmit_timer_member(),
            Some(("inet_connection_sock.icsk_retransmit_timer", 160))
        );
        assert_eq!(
            kernel(false, true).retransmit_timer_member(),
            Some(("sock.tcp_retransmit_timer", 48))
        );
        assert_eq!(kernel(false, false).retransmit_timer_member(), None);
    }
}
