//! encode stage: DICOM-SEG encoding ([`seg`]) and the stage loop ([`stage`]).
pub mod codes;
pub mod seg;
pub mod sr;
pub mod stage;
