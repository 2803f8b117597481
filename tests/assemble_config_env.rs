//! Environment override of `assemble.dixon_channels` (own test binary: it sets process
//! environment variables): a comma-separated list, as for the other list keys.

use myonode::config::Config;
use myonode::pipeline::messages::ChannelKind;

#[test]
fn dixon_channels_can_be_set_from_the_environment() {
    assert_eq!(Config::load(None).unwrap().assemble.dixon_channels.len(), 4, "default: all four kinds");
    std::env::set_var("MYONODE__ASSEMBLE__DIXON_CHANNELS", "water,fat");
    let c = Config::load(None).unwrap();
    assert_eq!(c.assemble.dixon_channels, vec![ChannelKind::Water, ChannelKind::Fat]);
    std::env::set_var("MYONODE__ASSEMBLE__DIXON_CHANNELS", "water");
    assert_eq!(Config::load(None).unwrap().assemble.dixon_channels, vec![ChannelKind::Water]);
}
