//! Configuration of the tissue analyses: embedded defaults, environment overrides, and a bone
//! threshold overlapping the muscle HU range rejected at load time with the key named.
//! One test function: environment variables are process-wide.

use myonode::config::Config;

#[test]
fn tissue_keys_defaults_overrides_and_validation() {
    let cfg = Config::load(None).unwrap();
    assert!(!cfg.segment.tissue_ct_allow_trunk);
    assert_eq!(cfg.segment.tissue_ct_bone_threshold_hu, 200.0);

    std::env::set_var("MYONODE__SEGMENT__TISSUE_CT_ALLOW_TRUNK", "true");
    std::env::set_var("MYONODE__SEGMENT__TISSUE_CT_BONE_THRESHOLD_HU", "300");
    let cfg = Config::load(None).unwrap();
    assert!(cfg.segment.tissue_ct_allow_trunk);
    assert_eq!(cfg.segment.tissue_ct_bone_threshold_hu, 300.0);
    let a = myonode::segment::create_analysis_with("tissue-composition-ct", &cfg.segment).unwrap();
    assert_eq!(a.name(), "tissue-composition-ct");

    std::env::set_var("MYONODE__SEGMENT__TISSUE_CT_BONE_THRESHOLD_HU", "120");
    let err = Config::load(None).unwrap_err().to_string();
    assert!(err.contains("segment.tissue_ct_bone_threshold_hu"), "{err}");
    std::env::remove_var("MYONODE__SEGMENT__TISSUE_CT_ALLOW_TRUNK");
    std::env::remove_var("MYONODE__SEGMENT__TISSUE_CT_BONE_THRESHOLD_HU");
}
