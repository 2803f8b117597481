//! DIMSE messages over P-DATA-TF: reassembly of PDV fragments and fragmentation for sending
//! (PS3.8 9.3.5 and Annex E; PS3.7 chapter 6).
//!
//! A message is a command set followed, if CommandDataSetType says so, by a data set.
//! Each is carried by one or more PDVs (Presentation Data Values) whose Message Control
//! Header marks command vs. data and the last fragment. PDVs may be spread over several
//! P-DATA-TF PDUs, and one PDU may hold several PDVs — also the last command fragment
//! together with the first data fragment. Messages are not interleaved on an association
//! (PS3.8 E.2), so a single [`MessageAssembler`] per association suffices.

use std::collections::VecDeque;

use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PDV_HEADER_SIZE};

use super::command::CommandSet;
use super::DimseError;

/// Upper bound of a P-DATA-TF PDU this node sends, even when the peer admits larger ones
/// (bounds the write buffer; any smaller PDU is valid).
pub const MAX_SEND_PDU_LENGTH: u32 = 1 << 20;

/// Default upper bound of one message (command + data set) held in memory by a
/// [`MessageAssembler`]: 2 GiB. A peer sending more is treated as a protocol violation.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 2 << 30;

/// One complete DIMSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DimseMessage {
    /// Presentation Context ID all its PDVs arrived on.
    pub presentation_context_id: u8,
    /// The decoded command set.
    pub command: CommandSet,
    /// The data set bytes exactly as received (in the presentation context's transfer
    /// syntax), `None` when CommandDataSetType is 0101H.
    pub dataset: Option<Vec<u8>>,
}

/// Reassembles PDVs into [`DimseMessage`]s.
///
/// Feed every P-DATA-TF's PDVs with [`MessageAssembler::push_pdu`] and take finished
/// messages with [`MessageAssembler::next_message`].
#[derive(Debug)]
pub struct MessageAssembler {
    /// Largest message accepted, bytes.
    max_message_bytes: usize,
    /// Bytes of the current message so far (command + data).
    message_bytes: usize,
    /// Presentation context of the message being assembled.
    pc_id: Option<u8>,
    command_bytes: Vec<u8>,
    /// Complete command waiting for its data set.
    command: Option<CommandSet>,
    data_bytes: Vec<u8>,
    ready: VecDeque<DimseMessage>,
}

impl Default for MessageAssembler {
    fn default() -> Self {
        MessageAssembler::with_limit(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl MessageAssembler {
    /// An empty assembler accepting messages up to [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty assembler accepting messages (command + data set) up to `max_message_bytes`.
    pub fn with_limit(max_message_bytes: usize) -> Self {
        MessageAssembler {
            max_message_bytes,
            message_bytes: 0,
            pc_id: None,
            command_bytes: Vec::new(),
            command: None,
            data_bytes: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    /// Add the PDVs of one P-DATA-TF PDU, in order.
    ///
    /// # Errors
    /// [`DimseError::Protocol`] on a PDV sequence that violates PS3.8 Annex E (data before
    /// the command is complete, a command fragment while a data set is expected, a change
    /// of presentation context inside one message, a message larger than the limit);
    /// [`DimseError::CommandDecode`] /
    /// [`DimseError::MissingCommandElement`] if the command set is malformed. The association
    /// should be aborted after an error.
    pub fn push_pdu(&mut self, pdvs: Vec<PDataValue>) -> Result<(), DimseError> {
        for pdv in pdvs {
            self.push_pdv(pdv)?;
        }
        Ok(())
    }

    /// Add one PDV. See [`MessageAssembler::push_pdu`] for errors.
    pub fn push_pdv(&mut self, pdv: PDataValue) -> Result<(), DimseError> {
        let PDataValue { presentation_context_id: pc, value_type, is_last, data } = pdv;
        self.message_bytes = self.message_bytes.saturating_add(data.len());
        if self.message_bytes > self.max_message_bytes {
            return Err(DimseError::Protocol(format!(
                "DIMSE message larger than the limit of {} bytes",
                self.max_message_bytes
            )));
        }
        match self.pc_id {
            Some(current) if current != pc => {
                return Err(DimseError::Protocol(format!(
                    "PDV on presentation context {pc} inside a message on presentation context {current}"
                )))
            }
            _ => self.pc_id = Some(pc),
        }
        match value_type {
            PDataValueType::Command => {
                if self.command.is_some() {
                    return Err(DimseError::Protocol(
                        "command fragment received while the data set of the previous command was expected".into(),
                    ));
                }
                if self.command_bytes.is_empty() {
                    self.command_bytes = data;
                } else {
                    self.command_bytes.extend_from_slice(&data);
                }
                if is_last {
                    let command = CommandSet::decode(&self.command_bytes)?;
                    self.command_bytes = Vec::new();
                    if command.has_data_set() {
                        self.command = Some(command);
                    } else {
                        self.ready.push_back(DimseMessage { presentation_context_id: pc, command, dataset: None });
                        self.pc_id = None;
                        self.message_bytes = 0;
                    }
                }
            }
            PDataValueType::Data => {
                if self.command.is_none() {
                    return Err(DimseError::Protocol(if self.command_bytes.is_empty() {
                        "data set fragment without a preceding command".into()
                    } else {
                        "data set fragment before the last command fragment".into()
                    }));
                }
                if self.data_bytes.is_empty() {
                    self.data_bytes = data;
                } else {
                    self.data_bytes.extend_from_slice(&data);
                }
                if is_last {
                    let command = self.command.take().expect("checked above");
                    let dataset = std::mem::take(&mut self.data_bytes);
                    self.ready.push_back(DimseMessage { presentation_context_id: pc, command, dataset: Some(dataset) });
                    self.pc_id = None;
                    self.message_bytes = 0;
                }
            }
        }
        Ok(())
    }

    /// The oldest complete message, if any.
    pub fn next_message(&mut self) -> Option<DimseMessage> {
        self.ready.pop_front()
    }

    /// The message whose data set is being received, if any: its presentation context ID, its
    /// (complete) command set, and the data set bytes received so far (a prefix of the data set
    /// [`Self::next_message`] will return; it only grows until the message is complete).
    ///
    /// `None` between messages, while the command is still arriving, and once the data set is
    /// complete (the message is then in the ready queue). Lets a C-STORE SCP write a large data
    /// set to disk while its later fragments are still arriving (`receive::staging`).
    pub fn data_in_progress(&self) -> Option<(u8, &CommandSet, &[u8])> {
        match (self.pc_id, &self.command) {
            (Some(pc), Some(command)) => Some((pc, command, &self.data_bytes)),
            _ => None,
        }
    }

    /// `true` when no message is partially received.
    pub fn is_between_messages(&self) -> bool {
        self.pc_id.is_none()
    }

    /// Bytes of the partially received message so far (command + data).
    pub fn buffered_bytes(&self) -> usize {
        self.message_bytes
    }
}

/// Iterator over the P-DATA-TF PDUs that carry one message: the command set in Command
/// PDVs, then the data set (if any) in Data PDVs, each PDU at most `max_pdu_length` bytes
/// long (the PDU-length field, i.e. excluding the 6-byte PDU header, PS3.8 9.3.5), as the
/// peer announced in its Maximum Length Sub-Item (PS3.8 D.1). Command and data never share
/// a PDU, which every peer accepts.
#[derive(Debug)]
pub struct MessagePdus<'a> {
    pc_id: u8,
    command: &'a [u8],
    dataset: Option<&'a [u8]>,
    max_fragment: usize,
    command_done: bool,
    data_done: bool,
}

/// Split a message into P-DATA-TF PDUs (see [`MessagePdus`]).
///
/// `max_pdu_length` is the peer's maximum PDU length (0 = unlimited, PS3.8 D.1.1); it is
/// capped at [`MAX_SEND_PDU_LENGTH`] and must leave room for a PDV header and one byte.
pub fn message_pdus<'a>(pc_id: u8, command: &'a [u8], dataset: Option<&'a [u8]>, max_pdu_length: u32) -> MessagePdus<'a> {
    let max = if max_pdu_length == 0 { MAX_SEND_PDU_LENGTH } else { max_pdu_length.min(MAX_SEND_PDU_LENGTH) };
    // A PDV item = 4-byte length + presentation context id + message control header + fragment.
    let max_fragment = (max.saturating_sub(PDV_HEADER_SIZE) as usize).max(1);
    MessagePdus { pc_id, command, dataset, max_fragment, command_done: false, data_done: dataset.is_none() }
}

impl Iterator for MessagePdus<'_> {
    type Item = Pdu;

    fn next(&mut self) -> Option<Pdu> {
        let (value_type, rest, done) = if !self.command_done {
            (PDataValueType::Command, &mut self.command, &mut self.command_done)
        } else if !self.data_done {
            (PDataValueType::Data, self.dataset.as_mut().expect("data_done is false only with a dataset"), &mut self.data_done)
        } else {
            return None;
        };
        let n = rest.len().min(self.max_fragment);
        let (chunk, tail) = rest.split_at(n);
        *rest = tail;
        let is_last = rest.is_empty();
        if is_last {
            *done = true;
        }
        Some(Pdu::PData {
            data: vec![PDataValue { presentation_context_id: self.pc_id, value_type, is_last, data: chunk.to_vec() }],
        })
    }
}

/// Length of the PDU-length field of a P-DATA-TF (bytes after the 6-byte header).
pub fn pdata_pdu_length(pdu: &Pdu) -> usize {
    match pdu {
        Pdu::PData { data } => data.iter().map(|v| PDV_HEADER_SIZE as usize + v.data.len()).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::command::{priority, CommandSet};

    fn pdv(pc: u8, t: PDataValueType, last: bool, data: &[u8]) -> PDataValue {
        PDataValue { presentation_context_id: pc, value_type: t, is_last: last, data: data.to_vec() }
    }

    /// Split `bytes` at the given cut points into PDVs of type `t`.
    fn split(pc: u8, t: PDataValueType, bytes: &[u8], cuts: &[usize]) -> Vec<PDataValue> {
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            if c <= start && c != bytes.len() {
                continue;
            }
            out.push(pdv(pc, t.clone(), c == bytes.len(), &bytes[start..c]));
            start = c;
        }
        out
    }

    fn sample() -> (Vec<u8>, Vec<u8>, CommandSet) {
        let cmd = CommandSet::c_store_rq(9, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6.7", priority::MEDIUM);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        (cmd.encode().unwrap(), data, cmd)
    }

    #[test]
    fn reassembles_across_arbitrary_fragment_and_pdu_boundaries() {
        let (cbytes, data, cmd) = sample();
        // try many cut patterns, and group PDVs into PDUs of varying sizes
        for (ci, ccuts) in [vec![], vec![1], vec![5, 17, 40], (1..cbytes.len()).collect::<Vec<_>>()].iter().enumerate() {
            for dcuts in [vec![], vec![1], vec![4096, 8192], vec![9_999], (1..40).map(|k| k * 250).collect()] {
                for group in [1usize, 2, 3, 7, 1000] {
                    let mut pdvs = split(3, PDataValueType::Command, &cbytes, ccuts);
                    pdvs.extend(split(3, PDataValueType::Data, &data, &dcuts));
                    let mut asm = MessageAssembler::new();
                    for chunk in pdvs.chunks(group) {
                        assert!(asm.next_message().is_none(), "message complete too early (cuts {ci}, group {group})");
                        asm.push_pdu(chunk.to_vec()).unwrap();
                    }
                    let m = asm.next_message().expect("complete message");
                    assert_eq!(m.presentation_context_id, 3);
                    assert_eq!(m.command, cmd);
                    assert_eq!(m.dataset.as_deref(), Some(&data[..]));
                    assert!(asm.next_message().is_none());
                    assert!(asm.is_between_messages());
                }
            }
        }
    }

    #[test]
    fn oversized_message_is_an_error() {
        let (cbytes, data, _) = sample();
        let mut asm = MessageAssembler::with_limit(cbytes.len() + 100);
        asm.push_pdv(pdv(1, PDataValueType::Command, true, &cbytes)).unwrap();
        asm.push_pdv(pdv(1, PDataValueType::Data, false, &data[..100])).unwrap();
        assert_eq!(asm.buffered_bytes(), cbytes.len() + 100);
        assert!(matches!(asm.push_pdv(pdv(1, PDataValueType::Data, true, &data[100..101])), Err(DimseError::Protocol(_))));
        // a message exactly at the limit is fine, and the count restarts per message
        let mut asm = MessageAssembler::with_limit(cbytes.len() + 100);
        for _ in 0..3 {
            asm.push_pdv(pdv(1, PDataValueType::Command, true, &cbytes)).unwrap();
            asm.push_pdv(pdv(1, PDataValueType::Data, true, &data[..100])).unwrap();
            assert_eq!(asm.next_message().unwrap().dataset.unwrap().len(), 100);
            assert_eq!(asm.buffered_bytes(), 0);
        }
    }

    #[test]
    fn several_messages_in_one_pdu() {
        let e1 = CommandSet::c_echo_rq(1).encode().unwrap();
        let e2 = CommandSet::c_echo_rq(2).encode().unwrap();
        let (cbytes, data, cmd) = sample();
        let mut asm = MessageAssembler::new();
        // echo 1 whole, store command last fragment + data first fragment, ...
        asm.push_pdu(vec![
            pdv(1, PDataValueType::Command, true, &e1),
            pdv(5, PDataValueType::Command, false, &cbytes[..10]),
        ])
        .unwrap();
        asm.push_pdu(vec![
            pdv(5, PDataValueType::Command, true, &cbytes[10..]),
            pdv(5, PDataValueType::Data, false, &data[..3]),
        ])
        .unwrap();
        asm.push_pdu(vec![pdv(5, PDataValueType::Data, true, &data[3..]), pdv(1, PDataValueType::Command, true, &e2)])
            .unwrap();
        let m1 = asm.next_message().unwrap();
        assert_eq!((m1.presentation_context_id, m1.command.message_id, m1.dataset), (1, Some(1), None));
        let m2 = asm.next_message().unwrap();
        assert_eq!(m2.command, cmd);
        assert_eq!(m2.dataset.unwrap(), data);
        let m3 = asm.next_message().unwrap();
        assert_eq!(m3.command.message_id, Some(2));
        assert!(asm.next_message().is_none());
    }

    /// `data_in_progress` shows each received prefix of the data set with its command, and
    /// nothing before the command is complete or after the message is.
    #[test]
    fn data_in_progress_is_a_growing_prefix() {
        let (cbytes, data, cmd) = sample();
        let mut asm = MessageAssembler::new();
        assert!(asm.data_in_progress().is_none());
        asm.push_pdv(pdv(4, PDataValueType::Command, false, &cbytes[..7])).unwrap();
        assert!(asm.data_in_progress().is_none(), "command not complete yet");
        asm.push_pdv(pdv(4, PDataValueType::Command, true, &cbytes[7..])).unwrap();
        let (pc, c, so_far) = asm.data_in_progress().expect("command complete, data expected");
        assert_eq!((pc, c, so_far.len()), (4, &cmd, 0));
        for cut in [1000usize, 1001, 6000] {
            let start = asm.data_in_progress().unwrap().2.len();
            asm.push_pdv(pdv(4, PDataValueType::Data, false, &data[start..cut])).unwrap();
            assert_eq!(asm.data_in_progress().unwrap().2, &data[..cut]);
        }
        asm.push_pdv(pdv(4, PDataValueType::Data, true, &data[6000..])).unwrap();
        assert!(asm.data_in_progress().is_none(), "message complete");
        assert_eq!(asm.next_message().unwrap().dataset.unwrap(), data);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let (cbytes, data, _) = sample();
        let mut asm = MessageAssembler::new();
        assert!(matches!(asm.push_pdv(pdv(1, PDataValueType::Data, true, &data)), Err(DimseError::Protocol(_))));

        let mut asm = MessageAssembler::new();
        asm.push_pdv(pdv(1, PDataValueType::Command, false, &cbytes[..4])).unwrap();
        assert!(matches!(asm.push_pdv(pdv(1, PDataValueType::Data, true, &data)), Err(DimseError::Protocol(_))));

        let mut asm = MessageAssembler::new();
        asm.push_pdv(pdv(1, PDataValueType::Command, true, &cbytes)).unwrap();
        assert!(matches!(asm.push_pdv(pdv(3, PDataValueType::Data, true, &data)), Err(DimseError::Protocol(_))));

        let mut asm = MessageAssembler::new();
        asm.push_pdv(pdv(1, PDataValueType::Command, true, &cbytes)).unwrap();
        assert!(!asm.is_between_messages());
        assert!(matches!(asm.push_pdv(pdv(1, PDataValueType::Command, true, &cbytes)), Err(DimseError::Protocol(_))));
    }

    #[test]
    fn fragmentation_respects_peer_max_and_round_trips() {
        let (cbytes, data, cmd) = sample();
        for max in [16u32, 100, 4096, 16_384, 0] {
            let pdus: Vec<Pdu> = message_pdus(7, &cbytes, Some(&data), max).collect();
            let limit = if max == 0 { MAX_SEND_PDU_LENGTH } else { max } as usize;
            let mut asm = MessageAssembler::new();
            let mut command_pdus = 0;
            for p in &pdus {
                assert!(pdata_pdu_length(p) <= limit, "PDU of {} > {limit}", pdata_pdu_length(p));
                // the encoded PDU on the wire is exactly header + length
                let mut wire = Vec::new();
                dicom_ul::write_pdu(&mut wire, p).unwrap();
                assert_eq!(wire.len(), dicom_ul::pdu::PDU_HEADER_SIZE as usize + pdata_pdu_length(p));
                if let Pdu::PData { data } = p {
                    assert_eq!(data.len(), 1);
                    if data[0].value_type == PDataValueType::Command {
                        command_pdus += 1;
                    }
                    asm.push_pdu(data.clone()).unwrap();
                }
            }
            let expected_cmd_pdus = cbytes.len().div_ceil(limit - PDV_HEADER_SIZE as usize);
            assert_eq!(command_pdus, expected_cmd_pdus, "max {max}");
            let m = asm.next_message().unwrap();
            assert_eq!(m.command, cmd);
            assert_eq!(m.dataset.unwrap(), data);
        }
        // a message without data set is command PDUs only
        let echo = CommandSet::c_echo_rq(1).encode().unwrap();
        let pdus: Vec<Pdu> = message_pdus(1, &echo, None, 16_384).collect();
        assert_eq!(pdus.len(), 1);
        // an empty data set still produces one last Data PDV
        let pdus: Vec<Pdu> = message_pdus(1, &echo, Some(&[]), 16_384).collect();
        assert_eq!(pdus.len(), 2);
    }
}
