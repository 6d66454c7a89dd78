//! ARP packets (RFC 826) for the addresses this node owns, built and read
//! with pnet_packet: replies to requests, and gratuitous ARP.

use std::net::Ipv4Addr;

use pnet_datalink::MacAddr;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::Packet;

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
const FRAME_LEN: usize = 42;

fn frame(
    op: pnet_packet::arp::ArpOperation,
    eth_dst: MacAddr,
    sender: (MacAddr, Ipv4Addr),
    target: (MacAddr, Ipv4Addr),
) -> Vec<u8> {
    let mut buf = vec![0u8; FRAME_LEN];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("42 bytes hold a frame");
        eth.set_destination(eth_dst);
        eth.set_source(sender.0);
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut arp =
        MutableArpPacket::new(&mut buf[EthernetPacket::minimum_packet_size()..]).expect("28 bytes");
    arp.set_hardware_type(ArpHardwareTypes::Ethernet);
    arp.set_protocol_type(EtherTypes::Ipv4);
    arp.set_hw_addr_len(6);
    arp.set_proto_addr_len(4);
    arp.set_operation(op);
    arp.set_sender_hw_addr(sender.0);
    arp.set_sender_proto_addr(sender.1);
    arp.set_target_hw_addr(target.0);
    arp.set_target_proto_addr(target.1);
    buf
}

/// The reply to `frame` if it is an ARP request for an address `owns`
/// accepts, from `mac`.
pub fn reply_to(
    frame_bytes: &[u8],
    mac: MacAddr,
    owns: impl Fn(Ipv4Addr) -> bool,
) -> Option<Vec<u8>> {
    let eth = EthernetPacket::new(frame_bytes)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_operation() != ArpOperations::Request
        || arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
    {
        return None;
    }
    let wanted = arp.get_target_proto_addr();
    // Our own frames come back on a packet socket, and an announcement
    // (sender = target) is news, not a question.
    if eth.get_source() == mac || arp.get_sender_proto_addr() == wanted || !owns(wanted) {
        return None;
    }
    let asker = (arp.get_sender_hw_addr(), arp.get_sender_proto_addr());
    Some(frame(ArpOperations::Reply, asker.0, (mac, wanted), asker))
}

/// A gratuitous ARP announcing that `ip` is at `mac`: a broadcast request
/// for `ip` from `ip` (RFC 5227 §3 calls it an ARP announcement), which
/// every neighbour that caches `ip` updates from.
pub fn gratuitous(ip: Ipv4Addr, mac: MacAddr) -> Vec<u8> {
    frame(
        ArpOperations::Request,
        MacAddr::broadcast(),
        (mac, ip),
        (MacAddr::zero(), ip),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x01);
    const THEIRS: MacAddr = MacAddr(0x02, 0, 0, 0, 0, 0x02);

    fn vip() -> Ipv4Addr {
        "192.0.2.10".parse().unwrap()
    }

    fn request(target: Ipv4Addr) -> Vec<u8> {
        frame(
            ArpOperations::Request,
            MacAddr::broadcast(),
            (THEIRS, "192.0.2.99".parse().unwrap()),
            (MacAddr::zero(), target),
        )
    }

    #[test]
    fn a_request_for_an_owned_address_gets_our_mac() {
        let reply = reply_to(&request(vip()), OURS, |ip| ip == vip()).unwrap();
        let eth = EthernetPacket::new(&reply).unwrap();
        assert_eq!(eth.get_destination(), THEIRS);
        assert_eq!(eth.get_source(), OURS);
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Reply);
        assert_eq!(arp.get_sender_hw_addr(), OURS);
        assert_eq!(arp.get_sender_proto_addr(), vip());
        assert_eq!(arp.get_target_hw_addr(), THEIRS);
        assert_eq!(
            arp.get_target_proto_addr(),
            "192.0.2.99".parse::<Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn other_addresses_replies_and_garbage_are_ignored() {
        let other: Ipv4Addr = "192.0.2.11".parse().unwrap();
        assert!(reply_to(&request(other), OURS, |ip| ip == vip()).is_none());
        let reply = reply_to(&request(vip()), OURS, |_| true).unwrap();
        assert!(
            reply_to(&reply, OURS, |_| true).is_none(),
            "a reply is not answered"
        );
        assert!(reply_to(&[0u8; 10], OURS, |_| true).is_none());
        // Announcements, ours or another node's, are not questions.
        assert!(reply_to(&gratuitous(vip(), OURS), OURS, |_| true).is_none());
        assert!(reply_to(&gratuitous(vip(), THEIRS), OURS, |_| true).is_none());
        let mut ipv4 = request(vip());
        ipv4[12] = 0x08;
        ipv4[13] = 0x00;
        assert!(reply_to(&ipv4, OURS, |_| true).is_none(), "not ARP");
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_announcement() {
        let g = gratuitous(vip(), OURS);
        let eth = EthernetPacket::new(&g).unwrap();
        assert_eq!(eth.get_destination(), MacAddr::broadcast());
        let arp = ArpPacket::new(eth.payload()).unwrap();
        assert_eq!(arp.get_operation(), ArpOperations::Request);
        assert_eq!(arp.get_sender_proto_addr(), vip());
        assert_eq!(arp.get_target_proto_addr(), vip());
        assert_eq!(arp.get_sender_hw_addr(), OURS);
    }
}
