//! NDP packets (RFC 4861) for the IPv6 addresses this node owns, built
//! and read with pnet_packet: neighbor advertisements answering neighbor
//! solicitations, and unsolicited advertisements (IPv6's gratuitous ARP,
//! §7.2.6).
//!
//! The kernel answers solicitations only for addresses on its interfaces
//! (or with proxy NDP configured), never for a `local` route, so unlike
//! ARP nothing needs turning off: a node whose Portico is gone stops
//! answering by itself.

use std::net::Ipv6Addr;

use pnet_datalink::MacAddr;
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNdpOptionPacket, MutableNeighborAdvertPacket, NdpOptionTypes, NeighborAdvertFlags,
    NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{Icmpv6Packet, Icmpv6Types};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};
use pnet_packet::Packet;

const ETHERNET: usize = 14;
const IPV6: usize = 40;
/// A neighbor advertisement (24) with a target link-layer address option
/// (8).
const ADVERT: usize = 32;

/// Every node on the link (ff02::1), and its Ethernet group (RFC 2464 §7).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: MacAddr = MacAddr(0x33, 0x33, 0, 0, 0, 1);

/// The solicited-node multicast group of `ip` (RFC 4291 §2.7.1): where
/// solicitations for it are sent, so a node must listen there.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An advertisement that `target` is at `mac`, from `target` to
/// `ip_dst`/`eth_dst`.
fn advert(
    target: Ipv6Addr,
    mac: MacAddr,
    ip_dst: Ipv6Addr,
    eth_dst: MacAddr,
    flags: u8,
) -> Vec<u8> {
    let mut buf = vec![0u8; ETHERNET + IPV6 + ADVERT];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("room for Ethernet");
        eth.set_destination(eth_dst);
        eth.set_source(mac);
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut buf[ETHERNET..]).expect("room for IPv6");
        ip.set_version(6);
        ip.set_payload_length(ADVERT as u16);
        ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
        // Receivers drop NDP with any other hop limit (RFC 4861 §7.1.2):
        // proof it was not routed.
        ip.set_hop_limit(255);
        ip.set_source(target);
        ip.set_destination(ip_dst);
    }
    let na_bytes = &mut buf[ETHERNET + IPV6..];
    {
        let mut na = MutableNeighborAdvertPacket::new(na_bytes).expect("room for the advert");
        na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
        na.set_flags(flags);
        na.set_target_addr(target);
    }
    {
        let mut option = MutableNdpOptionPacket::new(&mut na_bytes[24..]).expect("room for it");
        option.set_option_type(NdpOptionTypes::TargetLLAddr);
        // In units of 8 bytes: type, length and the MAC.
        option.set_length(1);
        option.set_data(&mac.octets());
    }
    let checksum = {
        let icmp = Icmpv6Packet::new(&buf[ETHERNET + IPV6..]).expect("an ICMPv6 packet");
        pnet_packet::icmpv6::checksum(&icmp, &target, &ip_dst)
    };
    MutableNeighborAdvertPacket::new(&mut buf[ETHERNET + IPV6..])
        .expect("room for the advert")
        .set_checksum(checksum);
    buf
}

/// The advertisement answering `frame` if it is a valid neighbor
/// solicitation for an address `owns` accepts, from `mac`.
pub fn reply_to(
    frame_bytes: &[u8],
    mac: MacAddr,
    owns: impl Fn(Ipv6Addr) -> bool,
) -> Option<Vec<u8>> {
    let eth = EthernetPacket::new(frame_bytes)?;
    // Our own frames come back on a packet socket.
    if eth.get_ethertype() != EtherTypes::Ipv6 || eth.get_source() == mac {
        return None;
    }
    let ip = Ipv6Packet::new(eth.payload())?;
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 || ip.get_hop_limit() != 255 {
        return None;
    }
    let len = usize::from(ip.get_payload_length()).min(ip.payload().len());
    let body = &ip.payload()[..len];
    let ns = NeighborSolicitPacket::new(body)?;
    if ns.get_icmpv6_type() != Icmpv6Types::NeighborSolicit || ns.get_icmpv6_code().0 != 0 {
        return None;
    }
    let wanted = ns.get_target_addr();
    if wanted.is_multicast() || !owns(wanted) {
        return None;
    }
    let asker = ip.get_source();
    if asker.is_unspecified() {
        // Duplicate address detection: the answer goes to everyone, not
        // solicited (RFC 4861 §7.2.4).
        return Some(advert(
            wanted,
            mac,
            ALL_NODES,
            ALL_NODES_MAC,
            NeighborAdvertFlags::Override,
        ));
    }
    // The asker's link-layer address: its option, else the frame's source.
    let asker_mac = ns
        .get_options_iter()
        .find(|o| o.get_option_type() == NdpOptionTypes::SourceLLAddr)
        .and_then(|o| <[u8; 6]>::try_from(o.payload().get(..6)?).ok())
        .map(MacAddr::from)
        .unwrap_or_else(|| eth.get_source());
    Some(advert(
        wanted,
        mac,
        asker,
        asker_mac,
        NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override,
    ))
}

/// An unsolicited advertisement that `ip` is at `mac`, to every node on
/// the link, overriding what they cached (RFC 4861 §7.2.6).
pub fn unsolicited(ip: Ipv6Addr, mac: MacAddr) -> Vec<u8> {
    advert(
        ip,
        mac,
        ALL_NODES,
        ALL_NODES_MAC,
        NeighborAdvertFlags::Override,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pnet_packet::icmpv6::ndp::NeighborAdvertPacket;
    use pnet_packet::icmpv6::ndp::{MutableNeighborSolicitPacket, NdpOptionPacket};

    const OURS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x01);
    const THEIRS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x02);

    fn vip() -> Ipv6Addr {
        "2001:db8::100".parse().unwrap()
    }

    fn asker() -> Ipv6Addr {
        "2001:db8::2".parse().unwrap()
    }

    /// A solicitation for `target` from `source` (with its link-layer
    /// address option unless the source is unspecified).
    fn solicitation(target: Ipv6Addr, source: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
        let with_option = !source.is_unspecified();
        let ns_len = 24 + if with_option { 8 } else { 0 };
        let mut buf = vec![0u8; ETHERNET + IPV6 + ns_len];
        let dst = solicited_node(target);
        {
            let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
            let o = dst.octets();
            eth.set_destination(MacAddr(0x33, 0x33, o[12], o[13], o[14], o[15]));
            eth.set_source(THEIRS);
            eth.set_ethertype(EtherTypes::Ipv6);
        }
        {
            let mut ip = MutableIpv6Packet::new(&mut buf[ETHERNET..]).unwrap();
            ip.set_version(6);
            ip.set_payload_length(ns_len as u16);
            ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
            ip.set_hop_limit(hop_limit);
            ip.set_source(source);
            ip.set_destination(dst);
        }
        {
            let mut ns = MutableNeighborSolicitPacket::new(&mut buf[ETHERNET + IPV6..]).unwrap();
            ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
            ns.set_target_addr(target);
        }
        if with_option {
            let mut o = MutableNdpOptionPacket::new(&mut buf[ETHERNET + IPV6 + 24..]).unwrap();
            o.set_option_type(NdpOptionTypes::SourceLLAddr);
            o.set_length(1);
            o.set_data(&THEIRS.octets());
        }
        buf
    }

    /// (Ethernet destination, IPv6 source and destination, flags, target,
    /// target link-layer address), checking what every advert must be.
    fn read(frame: &[u8]) -> (MacAddr, Ipv6Addr, Ipv6Addr, u8, Ipv6Addr, MacAddr) {
        let eth = EthernetPacket::new(frame).unwrap();
        assert_eq!(eth.get_source(), OURS);
        let ip = Ipv6Packet::new(eth.payload()).unwrap();
        assert_eq!(ip.get_hop_limit(), 255);
        assert_eq!(usize::from(ip.get_payload_length()), ip.payload().len());
        let icmp = Icmpv6Packet::new(ip.payload()).unwrap();
        assert_eq!(
            pnet_packet::icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()),
            icmp.get_checksum(),
            "checksum"
        );
        let na = NeighborAdvertPacket::new(ip.payload()).unwrap();
        assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
        let options: Vec<NdpOptionPacket> = na.get_options_iter().collect();
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].get_option_type(), NdpOptionTypes::TargetLLAddr);
        let lladdr = <[u8; 6]>::try_from(&options[0].payload()[..6]).unwrap();
        (
            eth.get_destination(),
            ip.get_source(),
            ip.get_destination(),
            na.get_flags(),
            na.get_target_addr(),
            MacAddr::from(lladdr),
        )
    }

    #[test]
    fn a_solicitation_for_an_owned_address_gets_our_mac() {
        let reply = reply_to(&solicitation(vip(), asker(), 255), OURS, |ip| ip == vip()).unwrap();
        let (eth_dst, src, dst, flags, target, lladdr) = read(&reply);
        assert_eq!((eth_dst, src, dst), (THEIRS, vip(), asker()));
        assert_eq!(
            flags,
            NeighborAdvertFlags::Solicited | NeighborAdvertFlags::Override
        );
        assert_eq!((target, lladdr), (vip(), OURS));
    }

    #[test]
    fn duplicate_address_detection_is_answered_to_all_nodes() {
        let reply = reply_to(
            &solicitation(vip(), Ipv6Addr::UNSPECIFIED, 255),
            OURS,
            |ip| ip == vip(),
        )
        .unwrap();
        let (eth_dst, _, dst, flags, _, _) = read(&reply);
        assert_eq!((eth_dst, dst), (ALL_NODES_MAC, ALL_NODES));
        assert_eq!(flags, NeighborAdvertFlags::Override, "not solicited");
    }

    #[test]
    fn other_addresses_routed_packets_adverts_and_garbage_are_ignored() {
        let owns = |ip: Ipv6Addr| ip == vip();
        let other: Ipv6Addr = "2001:db8::101".parse().unwrap();
        assert!(reply_to(&solicitation(other, asker(), 255), OURS, owns).is_none());
        // Hop limit below 255: it crossed a router.
        assert!(reply_to(&solicitation(vip(), asker(), 64), OURS, owns).is_none());
        let reply = reply_to(&solicitation(vip(), asker(), 255), OURS, owns).unwrap();
        assert!(
            reply_to(&reply, THEIRS, owns).is_none(),
            "an advert is not answered"
        );
        assert!(reply_to(&unsolicited(vip(), THEIRS), OURS, owns).is_none());
        // Our own solicitation, seen again on the packet socket.
        assert!(reply_to(&solicitation(vip(), asker(), 255), THEIRS, owns).is_none());
        assert!(reply_to(&[0u8; 20], OURS, owns).is_none());
        let mut cut = solicitation(vip(), asker(), 255);
        cut.truncate(ETHERNET + IPV6 + 10);
        assert!(reply_to(&cut, OURS, owns).is_none(), "truncated");
    }

    #[test]
    fn unsolicited_advert_goes_to_all_nodes_and_overrides() {
        let (eth_dst, src, dst, flags, target, lladdr) = read(&unsolicited(vip(), OURS));
        assert_eq!((eth_dst, src, dst), (ALL_NODES_MAC, vip(), ALL_NODES));
        assert_eq!(flags, NeighborAdvertFlags::Override);
        assert_eq!((target, lladdr), (vip(), OURS));
    }

    #[test]
    fn solicited_node_groups() {
        assert_eq!(
            solicited_node("2001:db8::1:2345:6789".parse().unwrap()),
            "ff02::1:ff45:6789".parse::<Ipv6Addr>().unwrap()
        );
    }
}
