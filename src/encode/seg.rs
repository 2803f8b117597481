//! STUB
pub struct SegOptions { pub series_number: i32, pub series_description: String, pub content_label: String, pub manufacturer: String, pub software_versions: String, pub institution_name: String, pub device_serial_number: String }
pub struct EncodedObject { pub bytes: Vec<u8>, pub sop_class_uid: String, pub sop_instance_uid: String, pub series_instance_uid: String }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct EncodeError;
pub fn encode_binary_seg(_s: &crate::pipeline::messages::Segmentation, _o: &SegOptions) -> Result<EncodedObject, EncodeError> { Err(EncodeError) }
