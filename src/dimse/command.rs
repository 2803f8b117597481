//! DIMSE command sets (PS3.7 chapter 9 and Annex E).
//!
//! A command set is a data set of group 0000 elements, always encoded in
//! Implicit VR Little Endian, starting with CommandGroupLength (0000,0000)
//! whose value is the number of bytes that follow it. [`CommandSet`] is the
//! typed view of the elements used by C-ECHO and C-STORE (PS3.7 9.3.1, 9.3.5);
//! [`CommandSet::encode`] and [`CommandSet::decode`] convert to and from bytes.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

use super::DimseError;

/// CommandField (0000,0100) values (PS3.7 E.1, Table E.1-1).
pub mod command_field {
    /// C-STORE-RQ.
    pub const C_STORE_RQ: u16 = 0x0001;
    /// C-STORE-RSP.
    pub const C_STORE_RSP: u16 = 0x8001;
    /// C-GET-RQ.
    pub const C_GET_RQ: u16 = 0x0010;
    /// C-FIND-RQ.
    pub const C_FIND_RQ: u16 = 0x0020;
    /// C-MOVE-RQ.
    pub const C_MOVE_RQ: u16 = 0x0021;
    /// C-ECHO-RQ.
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// C-ECHO-RSP.
    pub const C_ECHO_RSP: u16 = 0x8030;
    /// C-CANCEL-RQ (no response is sent).
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    /// Bit set in every response command field.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

/// Priority (0000,0700) values (PS3.7 9.3.1.1).
pub mod priority {
    /// MEDIUM.
    pub const MEDIUM: u16 = 0x0000;
    /// HIGH.
    pub const HIGH: u16 = 0x0001;
    /// LOW.
    pub const LOW: u16 = 0x0002;
}

/// CommandDataSetType (0000,0800) value meaning "no Data Set present" (PS3.7 E.1).
/// Any other value means a Data Set follows the command.
pub const NO_DATA_SET: u16 = 0x0101;
/// CommandDataSetType value this node writes when a Data Set follows.
pub const DATA_SET_PRESENT: u16 = 0x0000;

/// Maximum length of ErrorComment (0000,0902), VR LO (PS3.5 6.2).
pub const ERROR_COMMENT_MAX_LEN: usize = 64;

/// The elements of a DIMSE-C command set used by this node (PS3.7 9.3, E.1).
///
/// Optional fields are `None` when the element is absent. Text values are held
/// without their padding (trailing NUL or space).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandSet {
    /// CommandField (0000,0100), see [`command_field`].
    pub command_field: u16,
    /// AffectedSOPClassUID (0000,0002).
    pub affected_sop_class_uid: Option<String>,
    /// MessageID (0000,0110), requests only.
    pub message_id: Option<u16>,
    /// MessageIDBeingRespondedTo (0000,0120), responses only.
    pub message_id_being_responded_to: Option<u16>,
    /// Priority (0000,0700), see [`priority`].
    pub priority: Option<u16>,
    /// CommandDataSetType (0000,0800): [`NO_DATA_SET`] or any other value when a Data Set follows.
    pub command_data_set_type: u16,
    /// Status (0000,0900), responses only (see [`super::status`]).
    pub status: Option<u16>,
    /// ErrorComment (0000,0902), at most 64 characters.
    pub error_comment: Option<String>,
    /// AffectedSOPInstanceUID (0000,1000).
    pub affected_sop_instance_uid: Option<String>,
    /// MoveOriginatorApplicationEntityTitle (0000,1030), C-STORE-RQ on behalf of a C-MOVE.
    pub move_originator_ae_title: Option<String>,
    /// MoveOriginatorMessageID (0000,1031).
    pub move_originator_message_id: Option<u16>,
}

impl CommandSet {
    /// C-ECHO-RQ (PS3.7 9.3.5.1).
    pub fn c_echo_rq(message_id: u16) -> CommandSet {
        CommandSet {
            command_field: command_field::C_ECHO_RQ,
            affected_sop_class_uid: Some(dicom_dictionary_std::uids::VERIFICATION.to_string()),
            message_id: Some(message_id),
            command_data_set_type: NO_DATA_SET,
            ..Default::default()
        }
    }

    /// C-ECHO-RSP answering `request` with `status` (PS3.7 9.3.5.2).
    pub fn c_echo_rsp(request: &CommandSet, status: u16) -> CommandSet {
        CommandSet {
            command_field: command_field::C_ECHO_RSP,
            affected_sop_class_uid: request
                .affected_sop_class_uid
                .clone()
                .or_else(|| Some(dicom_dictionary_std::uids::VERIFICATION.to_string())),
            message_id_being_responded_to: request.message_id,
            command_data_set_type: NO_DATA_SET,
            status: Some(status),
            ..Default::default()
        }
    }

    /// C-STORE-RQ for one instance (PS3.7 9.3.1.1); a Data Set follows.
    pub fn c_store_rq(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str, priority: u16) -> CommandSet {
        CommandSet {
            command_field: command_field::C_STORE_RQ,
            affected_sop_class_uid: Some(sop_class_uid.to_string()),
            message_id: Some(message_id),
            priority: Some(priority),
            command_data_set_type: DATA_SET_PRESENT,
            affected_sop_instance_uid: Some(sop_instance_uid.to_string()),
            ..Default::default()
        }
    }

    /// C-STORE-RSP answering `request` (PS3.7 9.3.1.2). `error_comment` is truncated to 64 characters.
    pub fn c_store_rsp(request: &CommandSet, status: u16, error_comment: Option<&str>) -> CommandSet {
        CommandSet {
            command_field: command_field::C_STORE_RSP,
            affected_sop_class_uid: request.affected_sop_class_uid.clone(),
            message_id_being_responded_to: request.message_id,
            command_data_set_type: NO_DATA_SET,
            status: Some(status),
            error_comment: error_comment.map(truncate_comment),
            affected_sop_instance_uid: request.affected_sop_instance_uid.clone(),
            ..Default::default()
        }
    }

    /// A failure response to a request this node does not implement: the request's command
    /// field with the response bit set, Status [`super::status::UNRECOGNIZED_OPERATION`]
    /// (PS3.7 C.5.21).
    pub fn unrecognized_operation_rsp(request: &CommandSet) -> CommandSet {
        CommandSet {
            command_field: request.command_field | command_field::RESPONSE_BIT,
            affected_sop_class_uid: request.affected_sop_class_uid.clone(),
            message_id_being_responded_to: request.message_id,
            command_data_set_type: NO_DATA_SET,
            status: Some(super::status::UNRECOGNIZED_OPERATION),
            error_comment: Some("operation not supported by this node".into()),
            ..Default::default()
        }
    }

    /// `true` if a Data Set follows this command (CommandDataSetType ≠ 0101H).
    pub fn has_data_set(&self) -> bool {
        self.command_data_set_type != NO_DATA_SET
    }

    /// `true` if this is a response (bit 15 of CommandField set).
    pub fn is_response(&self) -> bool {
        self.command_field & command_field::RESPONSE_BIT != 0
    }

    /// Encode as an Implicit VR Little Endian data set with CommandGroupLength (0000,0000)
    /// first, its value the byte count of the remaining elements (PS3.7 E.1).
    /// UI values are padded with NUL, AE/LO values with a space, to even length (PS3.5 6.2).
    ///
    /// # Errors
    /// [`DimseError::CommandEncode`] if dicom-object fails to write the elements.
    pub fn encode(&self) -> Result<Vec<u8>, DimseError> {
        fn text(tag: Tag, vr: VR, value: &str, pad: char) -> InMemElement {
            let mut v = value.to_string();
            if v.len() % 2 == 1 {
                v.push(pad);
            }
            DataElement::new(tag, vr, PrimitiveValue::from(v))
        }
        fn us(tag: Tag, value: u16) -> InMemElement {
            DataElement::new(tag, VR::US, PrimitiveValue::from(value))
        }
        let mut elements = Vec::with_capacity(11);
        if let Some(v) = &self.affected_sop_class_uid {
            elements.push(text(tags::AFFECTED_SOP_CLASS_UID, VR::UI, v, '\0'));
        }
        elements.push(us(tags::COMMAND_FIELD, self.command_field));
        if let Some(v) = self.message_id {
            elements.push(us(tags::MESSAGE_ID, v));
        }
        if let Some(v) = self.message_id_being_responded_to {
            elements.push(us(tags::MESSAGE_ID_BEING_RESPONDED_TO, v));
        }
        if let Some(v) = self.priority {
            elements.push(us(tags::PRIORITY, v));
        }
        elements.push(us(tags::COMMAND_DATA_SET_TYPE, self.command_data_set_type));
        if let Some(v) = self.status {
            elements.push(us(tags::STATUS, v));
        }
        if let Some(v) = &self.error_comment {
            elements.push(text(tags::ERROR_COMMENT, VR::LO, &truncate_comment(v), ' '));
        }
        if let Some(v) = &self.affected_sop_instance_uid {
            elements.push(text(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, v, '\0'));
        }
        if let Some(v) = &self.move_originator_ae_title {
            elements.push(text(tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE, VR::AE, v, ' '));
        }
        if let Some(v) = self.move_originator_message_id {
            elements.push(us(tags::MOVE_ORIGINATOR_MESSAGE_ID, v));
        }
        let obj = InMemDicomObject::command_from_element_iter(elements);
        let mut out = Vec::with_capacity(256);
        obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| DimseError::CommandEncode { message: e.to_string() })?;
        Ok(out)
    }

    /// Decode a command set from Implicit VR Little Endian bytes (PS3.7 E.1) with this
    /// module's own bounded reader: every element header (tag, 4-byte length; PS3.5 7.1.3) is
    /// checked against the bytes present before its value is looked at, and values are
    /// borrowed from `bytes`, never allocated from a declared length. No general-purpose
    /// decoder sees the received bytes (dicom-rs reserves and zero-fills a value's declared
    /// length before reading it, which made a few hundred crafted bytes cost up to ~1 GiB;
    /// found by the `pdu_and_command` fuzz target).
    ///
    /// Elements this node does not use (CommandGroupLength, OffendingElement, the C-MOVE/C-GET
    /// sub-operation counters, …) are skipped. A repeated element keeps its last value.
    ///
    /// # Errors
    /// [`DimseError::CommandDecode`] for a truncated element header, a length beyond the bytes
    /// present or undefined (command sets hold no sequences), an element outside group 0000
    /// (PS3.7 E.1), or a US element whose value is not exactly 2 bytes (VM 1, PS3.7 Table E.1-1);
    /// [`DimseError::MissingCommandElement`] if CommandField or CommandDataSetType is absent.
    pub fn decode(bytes: &[u8]) -> Result<CommandSet, DimseError> {
        let mut cmd = CommandSet::default();
        let (mut command_field, mut command_data_set_type) = (None, None);
        for element in CommandElements::new(bytes) {
            let (tag, value) = element?;
            let us = |name: &'static str| -> Result<u16, DimseError> {
                match value {
                    [a, b] => Ok(u16::from_le_bytes([*a, *b])),
                    _ => Err(DimseError::CommandDecode {
                        message: format!("{name} {tag}: US value of {} bytes (expected 2)", value.len()),
                    }),
                }
            };
            // UI, AE and LO values of a command set use the default repertoire (ISO-IR 6, PS3.5
            // 6.1.2.1; no SpecificCharacterSet applies to group 0000): other bytes become '?',
            // which no UID contains, so the value stays encodable (responses echo it) and a UID
            // carrying it fails validation
            let text = || {
                let s: String = value.iter().map(|&b| if b.is_ascii() { b as char } else { '?' }).collect();
                Some(s.trim_end_matches(['\0', ' ']).trim_start().to_string())
            };
            match tag {
                tags::COMMAND_FIELD => command_field = Some(us("CommandField")?),
                tags::COMMAND_DATA_SET_TYPE => command_data_set_type = Some(us("CommandDataSetType")?),
                tags::AFFECTED_SOP_CLASS_UID => cmd.affected_sop_class_uid = text(),
                tags::MESSAGE_ID => cmd.message_id = Some(us("MessageID")?),
                tags::MESSAGE_ID_BEING_RESPONDED_TO => {
                    cmd.message_id_being_responded_to = Some(us("MessageIDBeingRespondedTo")?)
                }
                tags::PRIORITY => cmd.priority = Some(us("Priority")?),
                tags::STATUS => cmd.status = Some(us("Status")?),
                tags::ERROR_COMMENT => cmd.error_comment = text(),
                tags::AFFECTED_SOP_INSTANCE_UID => cmd.affected_sop_instance_uid = text(),
                tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE => cmd.move_originator_ae_title = text(),
                tags::MOVE_ORIGINATOR_MESSAGE_ID => cmd.move_originator_message_id = Some(us("MoveOriginatorMessageID")?),
                _ => {}
            }
        }
        cmd.command_field =
            command_field.ok_or(DimseError::MissingCommandElement { name: "CommandField", tag: tags::COMMAND_FIELD })?;
        cmd.command_data_set_type = command_data_set_type.ok_or(DimseError::MissingCommandElement {
            name: "CommandDataSetType",
            tag: tags::COMMAND_DATA_SET_TYPE,
        })?;
        Ok(cmd)
    }
}

/// Iterator over the elements of an Implicit VR Little Endian command set (PS3.5 7.1.3,
/// PS3.7 E.1): `(tag, value bytes)`, borrowed from the input. Yields an error and stops at a
/// truncated header, a length beyond the bytes present or undefined (FFFFFFFFH: command sets
/// hold no sequences), or an element outside group 0000.
struct CommandElements<'a> {
    bytes: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> CommandElements<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        CommandElements { bytes, pos: 0, failed: false }
    }

    fn next_element(&mut self) -> Result<(Tag, &'a [u8]), DimseError> {
        let (bytes, pos) = (self.bytes, self.pos);
        let Some(header) = bytes.get(pos..pos + 8) else {
            return Err(DimseError::CommandDecode { message: format!("truncated element header at byte {pos}") });
        };
        let tag = Tag(u16::from_le_bytes([header[0], header[1]]), u16::from_le_bytes([header[2], header[3]]));
        if tag.group() != 0x0000 {
            // PS3.7 6.3.1 / E.1: a command set holds only command elements (group 0000)
            return Err(DimseError::CommandDecode {
                message: format!("element {tag} at byte {pos} is not a command element"),
            });
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > bytes.len() - pos - 8 {
            return Err(DimseError::CommandDecode {
                message: format!("element length {len} at byte {pos} exceeds the command set ({} bytes)", bytes.len()),
            });
        }
        self.pos = pos + 8 + len;
        Ok((tag, &bytes[pos + 8..pos + 8 + len]))
    }
}

impl<'a> Iterator for CommandElements<'a> {
    type Item = Result<(Tag, &'a [u8]), DimseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let item = self.next_element();
        self.failed = item.is_err();
        Some(item)
    }
}

/// Truncate to the 64 characters LO allows, on a character boundary.
fn truncate_comment(s: &str) -> String {
    s.chars().filter(|c| *c != '\\' && !c.is_control()).take(ERROR_COMMENT_MAX_LEN).collect()
}

#[cfg(test)]
mod tests {

    /// PS3.7 E.1: only group-0000 elements belong in a command set; another group is refused
    /// before decoding (the decoder would otherwise descend into a value its dictionary calls SQ).
    #[test]
    fn non_command_group_element_is_refused() {
        let mut cmd = Vec::new();
        cmd.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0, 8, 0, 0, 0]); // (0000,0000) UL 8
        cmd.extend_from_slice(&[0x08, 0, 0x15, 0x11, 0, 0, 0, 0]); // (0008,1115) SQ, empty
        let err = CommandSet::decode(&cmd).unwrap_err().to_string();
        assert!(err.contains("not a command element"), "{err}");
    }
    use super::*;

    /// Walk Implicit VR LE elements: (tag, value bytes).
    fn elements(bytes: &[u8]) -> Vec<(Tag, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let g = u16::from_le_bytes([bytes[i], bytes[i + 1]]);
            let e = u16::from_le_bytes([bytes[i + 2], bytes[i + 3]]);
            let len = u32::from_le_bytes(bytes[i + 4..i + 8].try_into().unwrap()) as usize;
            out.push((Tag(g, e), bytes[i + 8..i + 8 + len].to_vec()));
            i += 8 + len;
        }
        out
    }

    #[test]
    fn c_store_rq_round_trip_and_group_length() {
        let mut rq = CommandSet::c_store_rq(7, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5", priority::MEDIUM);
        rq.move_originator_ae_title = Some("MOVER".into());
        rq.move_originator_message_id = Some(3);
        let bytes = rq.encode().unwrap();
        let els = elements(&bytes);
        // CommandGroupLength first, UL, value = bytes after it.
        assert_eq!(els[0].0, tags::COMMAND_GROUP_LENGTH);
        let gl = u32::from_le_bytes(els[0].1.clone().try_into().unwrap());
        assert_eq!(gl as usize, bytes.len() - 12);
        // elements in ascending tag order, all even length
        for w in els.windows(2) {
            assert!(w[0].0 < w[1].0, "{:?} !< {:?}", w[0].0, w[1].0);
        }
        assert!(els.iter().all(|(_, v)| v.len() % 2 == 0));
        // UID padded with NUL
        let uid = els.iter().find(|(t, _)| *t == tags::AFFECTED_SOP_INSTANCE_UID).unwrap();
        assert_eq!(uid.1, b"1.2.3.4.5\0");
        let cf = els.iter().find(|(t, _)| *t == tags::COMMAND_FIELD).unwrap();
        assert_eq!(cf.1, vec![0x01, 0x00]);
        let back = CommandSet::decode(&bytes).unwrap();
        assert_eq!(back, rq);
        assert!(back.has_data_set());
        assert!(!back.is_response());
    }

    #[test]
    fn responses_round_trip() {
        let rq = CommandSet::c_store_rq(42, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", priority::HIGH);
        let long = "x".repeat(100);
        let rsp = CommandSet::c_store_rsp(&rq, 0xA900, Some(&long));
        let back = CommandSet::decode(&rsp.encode().unwrap()).unwrap();
        assert_eq!(back.command_field, command_field::C_STORE_RSP);
        assert_eq!(back.message_id_being_responded_to, Some(42));
        assert_eq!(back.status, Some(0xA900));
        assert_eq!(back.error_comment.as_deref().map(str::len), Some(64));
        assert_eq!(back.affected_sop_instance_uid.as_deref(), Some("1.2.3"));
        assert!(!back.has_data_set());
        assert!(back.is_response());

        let echo = CommandSet::c_echo_rq(1);
        let e_back = CommandSet::decode(&echo.encode().unwrap()).unwrap();
        assert_eq!(e_back, echo);
        let e_rsp = CommandSet::c_echo_rsp(&e_back, 0);
        let bytes = e_rsp.encode().unwrap();
        // group length (12) + SOP class (8+18) + field (10) + MsgIDBRT (10) + DST (10) + status (10)
        assert_eq!(bytes.len(), 12 + 8 + 18 + 10 + 10 + 10 + 10);
        assert_eq!(CommandSet::decode(&bytes).unwrap(), e_rsp);
    }

    /// The bounded reader: a declared length beyond the bytes present is refused without
    /// allocating it, a US value of the wrong size is an error, and elements this node does not
    /// use (CommandGroupLength, the C-MOVE sub-operation counters) are skipped.
    #[test]
    fn bounded_reader_checks_lengths_and_types() {
        let rq = CommandSet::c_store_rq(9, "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4", priority::LOW);
        let mut bytes = rq.encode().unwrap();
        // NumberOfRemainingSuboperations (0000,1020) US 5: not used, skipped
        bytes.extend_from_slice(&[0x00, 0x00, 0x20, 0x10, 2, 0, 0, 0, 5, 0]);
        assert_eq!(CommandSet::decode(&bytes).unwrap(), rq);
        // an ErrorComment (0000,0902) declaring ~1 GiB in a 30-byte command
        let mut huge = bytes.clone();
        huge.extend_from_slice(&[0x00, 0x00, 0x02, 0x09, 0, 0, 0, 0x40, b'x', b'y']);
        let err = CommandSet::decode(&huge).unwrap_err().to_string();
        assert!(err.contains("exceeds the command set"), "{err}");
        // undefined length
        let mut undefined = bytes.clone();
        undefined.extend_from_slice(&[0x00, 0x00, 0x02, 0x09, 0xff, 0xff, 0xff, 0xff]);
        assert!(CommandSet::decode(&undefined).is_err());
        // CommandField (0000,0100) with a 4-byte value
        let bad_us = [0x00, 0x00, 0x00, 0x01, 4, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x00, 0x00, 0x08, 2, 0, 0, 0, 1, 1];
        let err = CommandSet::decode(&bad_us).unwrap_err().to_string();
        assert!(err.contains("CommandField") && err.contains("4 bytes"), "{err}");
        // a non-ASCII byte in a UID (found by the fuzz target): decoded as '?', and the command
        // still re-encodes, so a response echoing it can be sent
        let mut latin = CommandSet::c_store_rq(1, "1.2.3", "1.2.3.4", priority::MEDIUM).encode().unwrap();
        let at = latin.windows(5).position(|w| w == b"1.2.3").unwrap();
        latin[at + 1] = 0x80;
        let odd = CommandSet::decode(&latin).unwrap();
        assert_eq!(odd.affected_sop_class_uid.as_deref(), Some("1?2.3"));
        odd.encode().unwrap();
        // truncated header after a valid element
        let mut cut = bytes.clone();
        cut.extend_from_slice(&[0x00, 0x00, 0x02]);
        assert!(CommandSet::decode(&cut).unwrap_err().to_string().contains("truncated element header"));
    }

    #[test]
    fn decode_rejects_garbage_and_missing_field() {
        assert!(CommandSet::decode(&[0x00, 0x00, 0x00, 0x01, 0xff]).is_err());
        // only a MessageID element
        let bytes = [0x00, 0x00, 0x10, 0x01, 2, 0, 0, 0, 5, 0];
        assert!(matches!(
            CommandSet::decode(&bytes),
            Err(DimseError::MissingCommandElement { name: "CommandField", .. })
        ));
    }
}
