//! The JSON form of the messages, accepted by the gateway next to protobuf.

#[test]
fn json_form_uses_the_proto_field_names_and_defaults() {
    let request: logbook_proto::agent::v1::CheckinRequest = serde_json::from_str(
        r#"{"checkin_id":"x","report":{"hostname":"h","disks":[{"mount_point":"/"}]}}"#,
    )
    .expect("partial JSON is accepted like a partial protobuf message");
    let report = request.report.expect("report");
    assert_eq!(report.hostname, "h");
    assert_eq!(report.disks[0].mount_point, "/");
    assert_eq!(report.uptime_secs, 0);
}
