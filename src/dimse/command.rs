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

    /// Decode a command set from Implicit VR Little Endian bytes (PS3.7 E.1).
    ///
    /// # Errors
    /// [`DimseError::CommandDecode`] if the bytes are not a valid data set or an element
    /// has the wrong type; [`DimseError::MissingCommandElement`] if CommandField or
    /// CommandDataSetType is absent.
    pub fn decode(bytes: &[u8]) -> Result<CommandSet, DimseError> {
        check_element_lengths(bytes)?;
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| DimseError::CommandDecode { message: e.to_string() })?;
        let u16_of = |tag: Tag, name: &'static str| -> Result<Option<u16>, DimseError> {
            match obj.get(tag) {
                None => Ok(None),
                Some(e) => e
                    .to_int::<u16>()
                    .map(Some)
                    .map_err(|err| DimseError::CommandDecode { message: format!("{name} {tag}: {err}") }),
            }
        };
        let str_of = |tag: Tag, name: &'static str| -> Result<Option<String>, DimseError> {
            match obj.get(tag) {
                None => Ok(None),
                Some(e) => e
                    .to_str()
                    .map(|s| Some(s.trim_end_matches(['\0', ' ']).trim_start().to_string()))
                    .map_err(|err| DimseError::CommandDecode { message: format!("{name} {tag}: {err}") }),
            }
        };
        let command_field = u16_of(tags::COMMAND_FIELD, "CommandField")?
            .ok_or(DimseError::MissingCommandElement { name: "CommandField", tag: tags::COMMAND_FIELD })?;
        let command_data_set_type = u16_of(tags::COMMAND_DATA_SET_TYPE, "CommandDataSetType")?.ok_or(
            DimseError::MissingCommandElement { name: "CommandDataSetType", tag: tags::COMMAND_DATA_SET_TYPE },
        )?;
        Ok(CommandSet {
            command_field,
            affected_sop_class_uid: str_of(tags::AFFECTED_SOP_CLASS_UID, "AffectedSOPClassUID")?,
            message_id: u16_of(tags::MESSAGE_ID, "MessageID")?,
            message_id_being_responded_to: u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO, "MessageIDBeingRespondedTo")?,
            priority: u16_of(tags::PRIORITY, "Priority")?,
            command_data_set_type,
            status: u16_of(tags::STATUS, "Status")?,
            error_comment: str_of(tags::ERROR_COMMENT, "ErrorComment")?,
            affected_sop_instance_uid: str_of(tags::AFFECTED_SOP_INSTANCE_UID, "AffectedSOPInstanceUID")?,
            move_originator_ae_title: str_of(
                tags::MOVE_ORIGINATOR_APPLICATION_ENTITY_TITLE,
                "MoveOriginatorApplicationEntityTitle",
            )?,
            move_originator_message_id: u16_of(tags::MOVE_ORIGINATOR_MESSAGE_ID, "MoveOriginatorMessageID")?,
        })
    }
}

/// Walk the Implicit VR Little Endian element headers of a command set (tag, 4-byte length;
/// PS3.5 7.1.3, PS3.7 E.1) and refuse a length beyond the bytes present or undefined
/// (FFFFFFFFH: command sets hold no sequences), before dicom-rs decodes it: a length field
/// near 4 GiB in a short command would otherwise make the decoder allocate for it (found by
/// the `pdu_and_command` fuzz target).
fn check_element_lengths(bytes: &[u8]) -> Result<(), DimseError> {
    let mut pos = 0usize;
    while pos < bytes.len() {
        let Some(header) = bytes.get(pos..pos + 8) else {
            return Err(DimseError::CommandDecode { message: format!("truncated element header at byte {pos}") });
        };
        let group = u16::from_le_bytes([header[0], header[1]]);
        if group != 0x0000 {
            // PS3.7 6.3.1 / E.1: a command set holds only command elements (group 0000), none of
            // them a sequence. Refusing other groups keeps the decoder from descending into a
            // value its dictionary calls SQ, whose nested lengths this walk does not check.
            return Err(DimseError::CommandDecode {
                message: format!("element ({group:04X},{:04X}) at byte {pos} is not a command element", u16::from_le_bytes([header[2], header[3]])),
            });
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > bytes.len() - pos - 8 {
            return Err(DimseError::CommandDecode {
                message: format!("element length {len} at byte {pos} exceeds the command set ({} bytes)", bytes.len()),
            });
        }
        pos += 8 + len;
    }
    Ok(())
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
