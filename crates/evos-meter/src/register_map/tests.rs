//! Register maps: the shipped maps against register dumps written out by
//! hand from their vendor documents, block planning, the codec, and the
//! validation of bad maps.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::*;

// ---------------------------------------------------------------------------
// Helpers

fn shipped(name: &str) -> RegisterMap {
    let (_, text) = SHIPPED
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no shipped map {name}"));
    RegisterMap::parse(name, text).unwrap_or_else(|e| panic!("{e}"))
}

/// What a meter serving `writes` (start address → words, in register
/// order, everything else 0) answers to the map's read requests.
fn serve(map: &RegisterMap, writes: &[(Function, u16, &[u16])]) -> (Vec<Block>, Vec<Vec<u16>>) {
    let mut image = BTreeMap::new();
    for (function, address, words) in writes {
        for (i, word) in words.iter().enumerate() {
            image.insert((*function, address + i as u16), *word);
        }
    }
    let blocks = map.blocks();
    let data = read_image(&blocks, &image);
    (blocks, data)
}

fn read_image(blocks: &[Block], image: &BTreeMap<(Function, u16), u16>) -> Vec<Vec<u16>> {
    blocks
        .iter()
        .map(|b| {
            (0..b.count)
                .map(|i| {
                    image
                        .get(&(b.function, b.address + i))
                        .copied()
                        .unwrap_or(0)
                })
                .collect()
        })
        .collect()
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0)
}

#[track_caller]
fn assert_close(actual: f64, expected: f64) {
    assert!(close(actual, expected), "{actual} != {expected}");
}

#[track_caller]
fn assert_all_close(actual: &[Option<f64>], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_close(
            a.unwrap_or_else(|| panic!("missing value in {actual:?}")),
            *e,
        );
    }
}

fn register(data_type: DataType, word_order: WordOrder) -> Register {
    Register {
        address: 0,
        function: Function::Input,
        data_type,
        word_order,
        scale: 1.0,
        unit: Unit::Wh,
    }
}

fn parse_err(text: &str) -> String {
    match RegisterMap::parse("test-map", text) {
        Ok(map) => panic!("accepted a bad map: {map:?}"),
        Err(e) => e.to_string(),
    }
}

fn block(function: Function, address: u16, count: u16) -> Block {
    Block {
        function,
        address,
        count,
    }
}

// ---------------------------------------------------------------------------
// Every shipped map

#[test]
fn every_shipped_map_parses_and_names_its_document() {
    assert_eq!(SHIPPED.len(), 4);
    for (name, text) in SHIPPED {
        let map = RegisterMap::parse(name, text).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            map.registers.contains_key(&Quantity::EnergyImport),
            "{name}"
        );
        assert!(!map.display_name().trim().is_empty(), "{name}");
        let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(
            header.iter().any(|l| l.contains("Follows")),
            "{name}: the leading comment must name the vendor document"
        );
    }
}

#[test]
fn shipped_maps_load_by_name() {
    for (name, _) in SHIPPED {
        assert_eq!(RegisterMap::load(name).unwrap(), shipped(name));
    }
    assert_eq!(shipped("sdm630").display_name(), "Eastron SDM630 Modbus V2");
    assert_eq!(shipped("sdm72d-m").display_name(), "Eastron SDM72D-M");
    assert_eq!(
        shipped("em24").display_name(),
        "Carlo Gavazzi EM24-DIN (RS485)"
    );
    assert_eq!(shipped("dc-meter").display_name(), "Accuenergy AcuDC 240");
}

#[test]
fn an_unknown_name_lists_the_shipped_maps() {
    let err = RegisterMap::load("sdm999").unwrap_err().to_string();
    assert!(err.contains("sdm999"), "{err}");
    for (name, _) in SHIPPED {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn a_map_file_loads_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mine.toml");
    std::fs::write(&path, SHIPPED[0].1).unwrap();
    let map = RegisterMap::load(path.to_str().unwrap()).unwrap();
    assert_eq!(map, shipped(SHIPPED[0].0));

    let missing = dir.path().join("missing.toml");
    let err = RegisterMap::load(missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, MapError::Read { .. }), "{err}");
}

#[test]
fn shipped_map_kinds_and_phases() {
    let kinds: Vec<(&str, MeterKind, u8)> = SHIPPED
        .iter()
        .map(|(n, _)| {
            let m = shipped(n);
            (*n, m.meter.kind, m.meter.phases)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("sdm630", MeterKind::Ac, 3),
            ("sdm72d-m", MeterKind::Ac, 3),
            ("em24", MeterKind::Ac, 3),
            ("dc-meter", MeterKind::Dc, 1),
        ]
    );
}

// ---------------------------------------------------------------------------
// Block planning

#[test]
fn sdm630_reads_in_one_request() {
    // 0x0000..0x004C: volts, amps, watts per phase, total power (0x0034),
    // frequency (0x0046), import and export kWh (0x0048, 0x004A): 76
    // registers, within the document's 40 parameters (80 registers).
    assert_eq!(
        shipped("sdm630").blocks(),
        [block(Function::Input, 0x0000, 76)]
    );
}

#[test]
fn sdm72d_m_reads_only_listed_registers() {
    assert_eq!(
        shipped("sdm72d-m").blocks(),
        [
            block(Function::Input, 0x0034, 2),
            block(Function::Input, 0x0048, 4),
        ]
    );
}

#[test]
fn em24_requests_stay_within_eleven_registers() {
    assert_eq!(
        shipped("em24").blocks(),
        [
            block(Function::Input, 0x0000, 6),  // V L1..L3
            block(Function::Input, 0x000C, 10), // A L1..L3, W L1..L2
            block(Function::Input, 0x0016, 2),  // W L3
            block(Function::Input, 0x0028, 2),  // W sys
            block(Function::Input, 0x0037, 9),  // Hz .. kWh(+) TOT
        ]
    );
}

#[test]
fn dc_meter_reads_two_holding_tables() {
    assert_eq!(
        shipped("dc-meter").blocks(),
        [
            block(Function::Holding, 0x0200, 6),
            block(Function::Holding, 0x0300, 4),
        ]
    );
}

#[test]
fn every_block_fits_max_block_and_every_register_is_read() {
    for (name, _) in SHIPPED {
        let map = shipped(name);
        let blocks = map.blocks();
        for b in &blocks {
            assert!(
                b.count >= 1 && b.count <= map.meter.max_block,
                "{name}: {b:?}"
            );
        }
        for (q, r) in &map.registers {
            let covering = blocks
                .iter()
                .filter(|b| {
                    b.function == r.function
                        && b.address <= r.address
                        && u32::from(b.address) + u32::from(b.count) >= r.end()
                })
                .count();
            assert_eq!(covering, 1, "{name}: {q:?}");
        }
    }
}

fn planning_map(max_gap: u16, max_block: u16, registers: &str) -> RegisterMap {
    let text = format!(
        "[meter]\nvendor = \"T\"\nmodel = \"T\"\nkind = \"ac\"\nphases = 1\n\
         max_gap = {max_gap}\nmax_block = {max_block}\n{registers}"
    );
    RegisterMap::parse("planning", &text).unwrap_or_else(|e| panic!("{e}"))
}

const SPREAD: &str = "
[registers.energy_import]
address = 100
type = \"u32\"
unit = \"Wh\"
[registers.power]
address = 110
type = \"i16\"
unit = \"W\"
[registers.voltage]
address = 150
type = \"u16\"
unit = \"V\"
[registers.current]
address = 100
function = \"holding\"
type = \"u16\"
unit = \"A\"
";

#[test]
fn max_gap_decides_what_one_read_spans() {
    use Function::*;
    // No gap allowed: every non-adjacent register is its own read.
    assert_eq!(
        planning_map(0, 125, SPREAD).blocks(),
        [
            block(Input, 100, 2),
            block(Input, 110, 1),
            block(Input, 150, 1),
            block(Holding, 100, 1),
        ]
    );
    // A gap of 8 bridges 102..110 but not 111..150.
    assert_eq!(
        planning_map(8, 125, SPREAD).blocks(),
        [
            block(Input, 100, 11),
            block(Input, 150, 1),
            block(Holding, 100, 1),
        ]
    );
    // Input and holding registers never share a request.
    assert_eq!(
        planning_map(64, 125, SPREAD).blocks(),
        [block(Input, 100, 51), block(Holding, 100, 1)]
    );
}

#[test]
fn max_block_splits_a_span() {
    use Function::*;
    assert_eq!(
        planning_map(64, 50, SPREAD).blocks(),
        [
            block(Input, 100, 11),
            block(Input, 150, 1),
            block(Holding, 100, 1),
        ]
    );
    // Adjacent registers merge even with max_gap 0, up to max_block.
    let adjacent = "
[registers.energy_import]
address = 0
type = \"u64\"
unit = \"Wh\"
[registers.energy_export]
address = 4
type = \"u64\"
unit = \"Wh\"
[registers.power]
address = 8
type = \"i32\"
unit = \"W\"
";
    assert_eq!(
        planning_map(0, 125, adjacent).blocks(),
        [block(Input, 0, 10)]
    );
    assert_eq!(
        planning_map(0, 8, adjacent).blocks(),
        [block(Input, 0, 8), block(Input, 8, 2)]
    );
    assert_eq!(
        planning_map(0, 4, adjacent).blocks(),
        [block(Input, 0, 4), block(Input, 4, 4), block(Input, 8, 2)]
    );
}

// ---------------------------------------------------------------------------
// Known register dumps, decoded

#[test]
fn sdm630_decodes_a_known_dump() {
    // IEEE 754 float32, high word first, FC 04.
    let map = shipped("sdm630");
    let (blocks, data) = serve(
        &map,
        &[
            (Function::Input, 0x0000, &[0x4366, 0x0000]), // V1 230.0 V
            (Function::Input, 0x0002, &[0x4367, 0x8000]), // V2 231.5 V
            (Function::Input, 0x0004, &[0x4365, 0x0000]), // V3 229.0 V
            (Function::Input, 0x0006, &[0x4180, 0x0000]), // A1 16.0 A
            (Function::Input, 0x0008, &[0x4178, 0x0000]), // A2 15.5 A
            (Function::Input, 0x000A, &[0x4164, 0x0000]), // A3 14.25 A
            (Function::Input, 0x000C, &[0x4566, 0x0000]), // W1 3680 W
            (Function::Input, 0x000E, &[0x4560, 0x4000]), // W2 3588 W
            (Function::Input, 0x0010, &[0x454B, 0xF000]), // W3 3263 W
            (Function::Input, 0x0034, &[0x4624, 0x8C00]), // total 10531 W
            (Function::Input, 0x0046, &[0x4248, 0x0000]), // 50.0 Hz
            (Function::Input, 0x0048, &[0x449A, 0x5000]), // import 1234.5 kWh
            (Function::Input, 0x004A, &[0x3E80, 0x0000]), // export 0.25 kWh
        ],
    );
    assert_eq!(data[0].len(), 76);
    let reading = map.decode(&blocks, &data, 1_000).unwrap();
    assert_eq!(reading.timestamp_ms, 1_000);
    assert_close(reading.energy_import_wh, 1_234_500.0);
    assert_close(reading.energy_export_wh.unwrap(), 250.0);
    assert_close(reading.power_w.unwrap(), 10_531.0);
    assert_all_close(&reading.power_phase_w, &[3680.0, 3588.0, 3263.0]);
    assert_all_close(&reading.voltage_v, &[230.0, 231.5, 229.0]);
    assert_all_close(&reading.current_a, &[16.0, 15.5, 14.25]);
    assert_close(reading.frequency_hz.unwrap(), 50.0);
}

#[test]
fn sdm72d_m_decodes_a_known_dump() {
    // Exactly the two requests the map makes, written out.
    let map = shipped("sdm72d-m");
    let data = vec![
        vec![0x462C, 0x8000],                 // 0x0034 total power 11040 W
        vec![0x466F, 0xBB00, 0x4148, 0x0000], // 0x0048 import 15342.75 kWh, 0x004A export 12.5 kWh
    ];
    let reading = map.decode(&map.blocks(), &data, 7).unwrap();
    assert_close(reading.energy_import_wh, 15_342_750.0);
    assert_close(reading.energy_export_wh.unwrap(), 12_500.0);
    assert_close(reading.power_w.unwrap(), 11_040.0);
    // No voltage, current or frequency registers on this meter.
    assert_eq!(reading.voltage_v, [None, None, None]);
    assert_eq!(reading.current_a, [None, None, None]);
    assert_eq!(reading.power_phase_w, [None, None, None]);
    assert_eq!(reading.frequency_hz, None);
}

#[test]
fn em24_decodes_a_known_dump() {
    // INT32 low word first; V*10, A*1000, W*10, Hz*10 (INT16), kWh*10.
    let map = shipped("em24");
    let (blocks, data) = serve(
        &map,
        &[
            (Function::Input, 0x0000, &[0x08FC, 0x0000]), // 2300 → 230.0 V
            (Function::Input, 0x0002, &[0x090B, 0x0000]), // 2315 → 231.5 V
            (Function::Input, 0x0004, &[0x08F2, 0x0000]), // 2290 → 229.0 V
            (Function::Input, 0x000C, &[0x3E80, 0x0000]), // 16000 → 16.0 A
            (Function::Input, 0x000E, &[0x3C8C, 0x0000]), // 15500 → 15.5 A
            (Function::Input, 0x0010, &[0x37AA, 0x0000]), // 14250 → 14.25 A
            (Function::Input, 0x0012, &[0x8FC0, 0x0000]), // 36800 → 3680.0 W
            (Function::Input, 0x0014, &[0xCFC7, 0xFFFF]), // -12345 → -1234.5 W
            (Function::Input, 0x0016, &[0x7F76, 0x0000]), // 32630 → 3263.0 W
            (Function::Input, 0x0028, &[0xDEFD, 0x0000]), // 57085 → 5708.5 W
            (Function::Input, 0x0037, &[0x01F3]),         // 499 → 49.9 Hz
            (Function::Input, 0x003E, &[0xD687, 0x0012]), // 1234567 → 123456.7 kWh
        ],
    );
    assert_eq!(
        data[4],
        [0x01F3, 0, 0, 0, 0, 0, 0, 0xD687, 0x0012],
        "Hz at 0x0037, kWh(+) TOT at 0x003E"
    );
    let reading = map.decode(&blocks, &data, 0).unwrap();
    assert_close(reading.energy_import_wh, 123_456_700.0);
    assert_eq!(reading.energy_export_wh, None);
    assert_close(reading.power_w.unwrap(), 5_708.5);
    assert_all_close(&reading.power_phase_w, &[3680.0, -1234.5, 3263.0]);
    assert_all_close(&reading.voltage_v, &[230.0, 231.5, 229.0]);
    assert_all_close(&reading.current_a, &[16.0, 15.5, 14.25]);
    assert_close(reading.frequency_hz.unwrap(), 49.9);
}

#[test]
fn em24_energy_register_reads_lsw_first() {
    // 1234.5 kWh as INT32 kWh*10 = 12345 = 0x0000_3039, low word first.
    let energy = &shipped("em24").registers[&Quantity::EnergyImport];
    assert_close(energy.decode(&[0x3039, 0x0000]).unwrap(), 1_234_500.0);
    assert_eq!(energy.encode(1_234_500.0), [0x3039, 0x0000]);
    // The same words high word first would be 0x3039_0000 = 809 041 920.
    let big = Register {
        word_order: WordOrder::Big,
        ..energy.clone()
    };
    assert_close(big.decode(&[0x3039, 0x0000]).unwrap(), 80_904_192_000.0);
}

#[test]
fn dc_meter_decodes_a_known_dump() {
    // Float32 V, A, kW at 0x0200; Long kWh*100 at 0x0300; FC 03.
    let map = shipped("dc-meter");
    let data = vec![
        vec![
            0x4448, 0x0000, // 800.0 V
            0x433B, 0x8000, // 187.5 A
            0x4316, 0x0000, // 150.0 kW
        ],
        vec![
            0x0096, 0xB43F, // 9876543 → 98765.43 kWh imported
            0x0000, 0x03DB, // 987 → 9.87 kWh exported
        ],
    ];
    let reading = map.decode(&map.blocks(), &data, 42).unwrap();
    assert_close(reading.energy_import_wh, 98_765_430.0);
    assert_close(reading.energy_export_wh.unwrap(), 9_870.0);
    assert_close(reading.power_w.unwrap(), 150_000.0);
    assert_all_close(&reading.voltage_v, &[800.0]);
    assert_all_close(&reading.current_a, &[187.5]);
    assert_eq!(reading.power_phase_w, [None]);
    assert_eq!(reading.frequency_hz, None);
}

#[test]
fn decode_needs_every_block_and_a_number_for_energy() {
    let map = shipped("sdm72d-m");
    let blocks = map.blocks();
    let good = vec![vec![0x462C, 0x8000], vec![0x466F, 0xBB00, 0x4148, 0x0000]];
    assert!(map.decode(&blocks, &good, 0).is_some());
    // A short answer.
    let short = vec![vec![0x462C, 0x8000], vec![0x466F, 0xBB00, 0x4148]];
    assert_eq!(map.decode(&blocks, &short, 0), None);
    // A missing block.
    assert_eq!(map.decode(&blocks, &good[..1], 0), None);
    // Energy is NaN: no reading.
    let nan = vec![vec![0x462C, 0x8000], vec![0x7FC0, 0x0000, 0x4148, 0x0000]];
    assert_eq!(map.decode(&blocks, &nan, 0), None);
    // Power is NaN: a reading without power.
    let no_power = vec![vec![0x7FC0, 0x0000], vec![0x466F, 0xBB00, 0x4148, 0x0000]];
    assert_eq!(map.decode(&blocks, &no_power, 0).unwrap().power_w, None);
}

// ---------------------------------------------------------------------------
// encode → decode, every quantity of every map

fn sample_reading(map: &RegisterMap) -> Reading {
    let phases = usize::from(map.meter.phases);
    let per_phase = |v: [f64; 3]| v[..phases].iter().map(|x| Some(*x)).collect::<Vec<_>>();
    match map.meter.kind {
        MeterKind::Ac => Reading {
            timestamp_ms: 1_700_000_000_123,
            energy_import_wh: 12_345_670.0,
            energy_export_wh: Some(4_321.0),
            power_w: Some(7_401.5),
            power_phase_w: per_phase([2_400.5, 2_500.0, 2_501.0]),
            voltage_v: per_phase([229.9, 230.1, 231.0]),
            current_a: per_phase([10.5, 10.875, 10.8]),
            frequency_hz: Some(50.02),
        },
        MeterKind::Dc => Reading {
            timestamp_ms: 1_700_000_000_123,
            energy_import_wh: 98_765_430.0,
            energy_export_wh: Some(1_230.0),
            power_w: Some(146_400.0),
            power_phase_w: vec![None],
            voltage_v: vec![Some(812.3)],
            current_a: vec![Some(180.25)],
            frequency_hz: None,
        },
    }
}

/// How far a decoded value may be from the one encoded: half a step of an
/// integer register, float32 rounding for a float.
fn resolution(register: &Register, value: f64) -> f64 {
    match register.data_type {
        DataType::Float32 => value.abs() * f64::from(f32::EPSILON),
        _ => (register.scale * register.unit.canonical().1).abs() / 2.0,
    }
}

#[test]
fn every_quantity_of_every_map_survives_encode_then_decode() {
    for (name, _) in SHIPPED {
        let map = shipped(name);
        let reading = sample_reading(&map);
        let image = map.encode(&reading);
        let words: usize = map
            .registers
            .values()
            .map(|r| usize::from(r.data_type.words()))
            .sum();
        assert_eq!(image.len(), words, "{name}: one word per register word");
        let blocks = map.blocks();
        let decoded = map
            .decode(&blocks, &read_image(&blocks, &image), reading.timestamp_ms)
            .unwrap_or_else(|| panic!("{name}: no reading"));
        assert_eq!(decoded.timestamp_ms, reading.timestamp_ms);
        for (quantity, register) in &map.registers {
            let expected = reading.quantity(*quantity).unwrap();
            let actual = decoded
                .quantity(*quantity)
                .unwrap_or_else(|| panic!("{name}: {quantity:?} lost"));
            let tolerance = resolution(register, expected) + 1e-9;
            assert!(
                (actual - expected).abs() <= tolerance,
                "{name}: {quantity:?} {actual} != {expected} ± {tolerance}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The codec: word order, sign, 64-bit

#[test]
fn word_order_swaps_whole_words_never_bytes() {
    use DataType::*;
    use WordOrder::*;
    let cases: [(DataType, f64, &[u16], &[u16]); 5] = [
        (U32, 305_419_896.0, &[0x1234, 0x5678], &[0x5678, 0x1234]),
        (I32, 305_419_896.0, &[0x1234, 0x5678], &[0x5678, 0x1234]),
        (Float32, 230.0, &[0x4366, 0x0000], &[0x0000, 0x4366]),
        (
            U64,
            5_124_095_576_030_430.0, // 0x0012_3456_789A_BCDE
            &[0x0012, 0x3456, 0x789A, 0xBCDE],
            &[0xBCDE, 0x789A, 0x3456, 0x0012],
        ),
        (U16, 4_660.0, &[0x1234], &[0x1234]),
    ];
    for (data_type, value, big, little) in cases {
        let b = register(data_type, Big);
        let l = register(data_type, Little);
        assert_eq!(b.encode(value), big, "{data_type:?} big");
        assert_eq!(l.encode(value), little, "{data_type:?} little");
        assert_close(b.decode(big).unwrap(), value);
        assert_close(l.decode(little).unwrap(), value);
    }
    // Read the other way round, the same words are another number.
    assert_close(
        register(U32, Little).decode(&[0x1234, 0x5678]).unwrap(),
        f64::from(0x5678_1234u32),
    );
}

#[test]
fn signed_types_decode_negative_values() {
    use DataType::*;
    use WordOrder::*;
    let cases: [(DataType, WordOrder, &[u16], f64); 10] = [
        (I16, Big, &[0xFF38], -200.0),
        (I16, Big, &[0x8000], -32_768.0),
        (I32, Big, &[0xFFFF, 0xFF38], -200.0),
        (I32, Little, &[0xFF38, 0xFFFF], -200.0),
        (I32, Big, &[0x8000, 0x0000], -2_147_483_648.0),
        (I32, Little, &[0xCFC7, 0xFFFF], -12_345.0),
        (I64, Big, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFF38], -200.0),
        (I64, Little, &[0xFF38, 0xFFFF, 0xFFFF, 0xFFFF], -200.0),
        (
            I64,
            Big,
            &[0xFFFF, 0xFFFE, 0x0000, 0x0000],
            -8_589_934_592.0,
        ), // -2^33
        (
            I64,
            Big,
            &[0x8000, 0x0000, 0x0000, 0x0000],
            -9_223_372_036_854_775_808.0,
        ),
    ];
    for (data_type, order, words, value) in cases {
        let r = register(data_type, order);
        assert_eq!(
            r.decode(words),
            Some(value),
            "{data_type:?} {order:?} {words:04X?}"
        );
        assert_eq!(r.encode(value), words, "{data_type:?} {order:?} {value}");
    }
    // The same words, unsigned, are large positive numbers.
    assert_eq!(register(U16, Big).decode(&[0xFF38]), Some(65_336.0));
    assert_eq!(
        register(U32, Big).decode(&[0xFFFF, 0xFF38]),
        Some(4_294_967_096.0)
    );
}

#[test]
fn u64_counts_beyond_two_to_the_32() {
    let big = register(DataType::U64, WordOrder::Big);
    let little = register(DataType::U64, WordOrder::Little);
    // 2^32 + 2
    assert_eq!(
        big.decode(&[0x0000, 0x0001, 0x0000, 0x0002]),
        Some(4_294_967_298.0)
    );
    assert_eq!(
        little.decode(&[0x0002, 0x0000, 0x0001, 0x0000]),
        Some(4_294_967_298.0)
    );
    assert_eq!(
        big.encode(4_294_967_298.0),
        [0x0000, 0x0001, 0x0000, 0x0002]
    );
    // 2^48 + 2^32 + 2^16 + 1
    assert_eq!(
        big.decode(&[0x0001, 0x0001, 0x0001, 0x0001]),
        Some(281_479_271_743_489.0)
    );
    // Beyond u32::MAX a 32-bit register saturates where a 64-bit one does not.
    assert_eq!(
        register(DataType::U32, WordOrder::Big).encode(5e9),
        [0xFFFF, 0xFFFF]
    );
    assert_eq!(big.encode(5e9), [0x0000, 0x0001, 0x2A05, 0xF200]);
}

#[test]
fn a_u64_energy_register_decodes_through_a_whole_map() {
    // Wh as UINT64, LSW first: 5 000 000 000 Wh = 0x0000_0001_2A05_F200.
    let map = RegisterMap::parse(
        "u64",
        "[meter]\nvendor = \"T\"\nmodel = \"T\"\nkind = \"dc\"\nphases = 1\n\
         [registers.energy_import]\naddress = 0x1000\ntype = \"u64\"\n\
         word_order = \"little\"\nunit = \"Wh\"\n\
         [registers.energy_export]\naddress = 0x1004\ntype = \"i64\"\nunit = \"Wh\"\n",
    )
    .unwrap();
    let blocks = map.blocks();
    assert_eq!(blocks, [block(Function::Input, 0x1000, 8)]);
    let data = vec![vec![
        0xF200, 0x2A05, 0x0001, 0x0000, // import, little
        0x0000, 0x0000, 0x0000, 0x3039, // export 12345 Wh, big
    ]];
    let reading = map.decode(&blocks, &data, 0).unwrap();
    assert_eq!(reading.energy_import_wh, 5_000_000_000.0);
    assert_eq!(reading.energy_export_wh, Some(12_345.0));
    let image = map.encode(&reading);
    assert_eq!(read_image(&blocks, &image), data);
}

#[test]
fn encode_saturates_at_the_type_range() {
    use DataType::*;
    let r = |t| register(t, WordOrder::Big);
    assert_eq!(r(U16).encode(-5.0), [0x0000]);
    assert_eq!(r(U16).encode(70_000.0), [0xFFFF]);
    assert_eq!(r(I16).encode(40_000.0), [0x7FFF]);
    assert_eq!(r(I16).encode(-40_000.0), [0x8000]);
    assert_eq!(r(U32).encode(-1.0), [0x0000, 0x0000]);
    assert_eq!(r(I32).encode(3e9), [0x7FFF, 0xFFFF]);
    assert_eq!(r(U64).encode(-1.0), [0, 0, 0, 0]);
}

#[test]
fn scale_and_unit_convert_to_the_canonical_unit() {
    let r = |data_type, scale, unit| Register {
        address: 0,
        function: Function::Holding,
        data_type,
        word_order: WordOrder::Big,
        scale,
        unit,
    };
    // 0.01 kWh steps: 12345 → 123.45 kWh = 123 450 Wh.
    assert_close(
        r(DataType::U32, 0.01, Unit::KWh)
            .decode(&[0x0000, 0x3039])
            .unwrap(),
        123_450.0,
    );
    // MWh, kW, kV, mA.
    assert_close(r(DataType::U16, 1.0, Unit::MWh).decode(&[3]).unwrap(), 3e6);
    assert_close(
        r(DataType::I16, 0.1, Unit::KW).decode(&[0xFFF6]).unwrap(),
        -1_000.0,
    );
    assert_close(
        r(DataType::U16, 0.01, Unit::KV).decode(&[40]).unwrap(),
        400.0,
    );
    assert_close(
        r(DataType::U16, 1.0, Unit::MA).decode(&[1500]).unwrap(),
        1.5,
    );
    assert_eq!(r(DataType::I16, 0.1, Unit::KW).encode(-1_000.0), [0xFFF6]);
    // Too few words: nothing.
    assert_eq!(r(DataType::U32, 1.0, Unit::Wh).decode(&[1]), None);
    // Infinity is not a reading.
    assert_eq!(
        r(DataType::Float32, 1.0, Unit::W).decode(&[0x7F80, 0x0000]),
        None
    );
}

// ---------------------------------------------------------------------------
// Bad maps

const METER: &str = "[meter]\nvendor = \"T\"\nmodel = \"T\"\nkind = \"ac\"\nphases = 3\n";
const ENERGY: &str = "[registers.energy_import]\naddress = 0\ntype = \"u32\"\nunit = \"Wh\"\n";

#[test]
fn the_test_base_map_is_valid() {
    RegisterMap::parse("base", &format!("{METER}{ENERGY}")).unwrap();
}

#[test]
fn a_map_without_energy_import_is_rejected() {
    let err = parse_err(&format!(
        "{METER}[registers.power]\naddress = 0\ntype = \"i32\"\nunit = \"W\"\n"
    ));
    assert!(err.contains("test-map"), "{err}");
    assert!(err.contains("registers.energy_import is required"), "{err}");
    let err = parse_err(METER);
    assert!(err.contains("registers"), "{err}");
}

#[test]
fn a_unit_that_does_not_fit_the_quantity_is_rejected() {
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\naddress = 0\ntype = \"u32\"\nunit = \"V\"\n"
    ));
    assert!(err.contains("registers.energy_import.unit"), "{err}");
    assert!(err.contains("V is not a unit of Wh"), "{err}");
    let err = parse_err(&format!(
        "{METER}{ENERGY}[registers.current_l2]\naddress = 4\ntype = \"u16\"\nunit = \"kW\"\n"
    ));
    assert!(err.contains("registers.current_l2.unit"), "{err}");
    // Not a unit at all.
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\naddress = 0\ntype = \"u32\"\nunit = \"kVAh\"\n"
    ));
    assert!(err.contains("kVAh"), "{err}");
}

#[test]
fn max_block_out_of_range_is_rejected() {
    for max_block in [0, 3, 126, 1000] {
        let err = parse_err(&format!("{METER}max_block = {max_block}\n{ENERGY}"));
        assert!(
            err.contains("meter.max_block must be within 4..=125"),
            "{err}"
        );
    }
    for max_block in [4, 125] {
        RegisterMap::parse("ok", &format!("{METER}max_block = {max_block}\n{ENERGY}")).unwrap();
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let err = parse_err(&format!("{METER}maxblock = 10\n{ENERGY}"));
    assert!(err.contains("unknown field `maxblock`"), "{err}");
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\nadress = 0\ntype = \"u32\"\nunit = \"Wh\"\n"
    ));
    assert!(err.contains("unknown field `adress`"), "{err}");
    let err = parse_err(&format!(
        "{METER}{ENERGY}[registers.energy_imported]\naddress = 8\ntype = \"u32\"\nunit = \"Wh\"\n"
    ));
    assert!(err.contains("unknown variant `energy_imported`"), "{err}");
    let err = parse_err(&format!("{METER}{ENERGY}[extra]\nkey = 1\n"));
    assert!(err.contains("unknown field `extra`"), "{err}");
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\naddress = 0\ntype = \"u128\"\nunit = \"Wh\"\n"
    ));
    assert!(err.contains("u128"), "{err}");
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\naddress = 0\nfunction = \"coil\"\ntype = \"u32\"\nunit = \"Wh\"\n"
    ));
    assert!(err.contains("coil"), "{err}");
}

#[test]
fn a_register_past_0xffff_is_rejected() {
    for data_type in ["u32", "float32"] {
        let err = parse_err(&format!(
            "{METER}[registers.energy_import]\naddress = 0xFFFF\ntype = \"{data_type}\"\nunit = \"Wh\"\n"
        ));
        assert!(
            err.contains("registers.energy_import: runs past register 0xFFFF"),
            "{err}"
        );
    }
    let err = parse_err(&format!(
        "{METER}{ENERGY}[registers.power]\naddress = 0xFFFD\ntype = \"i64\"\nunit = \"W\"\n"
    ));
    assert!(
        err.contains("registers.power: runs past register 0xFFFF"),
        "{err}"
    );
    // An address that is not a register number at all.
    let err = parse_err(&format!(
        "{METER}[registers.energy_import]\naddress = 0x10000\ntype = \"u16\"\nunit = \"Wh\"\n"
    ));
    assert!(err.contains("65536"), "{err}");
    // The last register itself is fine.
    RegisterMap::parse(
        "ok",
        &format!(
            "{METER}[registers.energy_import]\naddress = 0xFFFF\ntype = \"u16\"\nunit = \"Wh\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn other_bad_values_are_rejected() {
    let meter = |phases: u8| METER.replace("phases = 3", &format!("phases = {phases}"));
    for phases in [0, 4] {
        let err = parse_err(&format!("{}{ENERGY}", meter(phases)));
        assert!(err.contains("meter.phases must be 1, 2 or 3"), "{err}");
    }
    for scale in ["0.0", "nan", "inf"] {
        let err = parse_err(&format!(
            "{METER}[registers.energy_import]\naddress = 0\ntype = \"u32\"\nscale = {scale}\nunit = \"Wh\"\n"
        ));
        assert!(
            err.contains("registers.energy_import.scale: must be finite and not 0"),
            "{err}"
        );
    }
    let err = parse_err(&format!("{}{ENERGY}", METER.replace("\"ac\"", "\"hvdc\"")));
    assert!(err.contains("hvdc"), "{err}");
    let err = parse_err(&format!(
        "{METER}{ENERGY}[ocmf]\naddress = 0xFFF0\nlength = 0x20\n"
    ));
    assert!(err.contains("ocmf"), "{err}");
    let err = parse_err(&format!(
        "{METER}{ENERGY}[ocmf]\naddress = 0x100\nlength = 0\n"
    ));
    assert!(err.contains("ocmf"), "{err}");
}

// ---------------------------------------------------------------------------
// Properties (fixed seed: deterministic)

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        rng_seed: RngSeed::Fixed(0x0e05_3e7e),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn word_order() -> impl Strategy<Value = WordOrder> {
    prop_oneof![Just(WordOrder::Big), Just(WordOrder::Little)]
}

/// The words a meter sends for the integer `raw`, built without `encode`.
fn words_of(raw: i128, data_type: DataType, order: WordOrder) -> Vec<u16> {
    let n = usize::from(data_type.words());
    let bits = raw as u128; // two's complement; only the low 16·n bits count
    let mut words: Vec<u16> = (0..n).rev().map(|i| (bits >> (16 * i)) as u16).collect();
    if order == WordOrder::Little {
        words.reverse();
    }
    words
}

fn integer_case() -> impl Strategy<Value = (DataType, i128)> {
    const EXACT: i64 = 1 << 53; // every integer below is exact in an f64
    prop_oneof![
        any::<u16>().prop_map(|v| (DataType::U16, i128::from(v))),
        any::<i16>().prop_map(|v| (DataType::I16, i128::from(v))),
        any::<u32>().prop_map(|v| (DataType::U32, i128::from(v))),
        any::<i32>().prop_map(|v| (DataType::I32, i128::from(v))),
        (0..EXACT).prop_map(|v| (DataType::U64, i128::from(v))),
        (-EXACT..EXACT).prop_map(|v| (DataType::I64, i128::from(v))),
        // The extremes of the 64-bit types (not exact in general, but these are).
        Just((DataType::U64, 1i128 << 63)),
        Just((DataType::I64, i128::from(i64::MIN))),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn integers_round_trip_exactly((data_type, raw) in integer_case(), order in word_order()) {
        let r = register(data_type, order);
        let words = words_of(raw, data_type, order);
        prop_assert_eq!(r.decode(&words), Some(raw as f64));
        prop_assert_eq!(r.encode(raw as f64), words);
    }

    #[test]
    fn float32_round_trips_exactly(
        value in any::<f32>().prop_filter("finite", |v| v.is_finite()),
        order in word_order(),
    ) {
        let r = register(DataType::Float32, order);
        let words = r.encode(f64::from(value));
        prop_assert_eq!(words.len(), 2);
        prop_assert_eq!(r.decode(&words), Some(f64::from(value)));
        let bits = value.to_bits();
        let big = [(bits >> 16) as u16, bits as u16];
        match order {
            WordOrder::Big => prop_assert_eq!(words, big.to_vec()),
            WordOrder::Little => prop_assert_eq!(words, vec![big[1], big[0]]),
        }
    }

    #[test]
    fn scaled_registers_give_back_the_words_they_read(
        (data_type, raw) in prop_oneof![
            any::<u16>().prop_map(|v| (DataType::U16, i128::from(v))),
            any::<i16>().prop_map(|v| (DataType::I16, i128::from(v))),
            any::<u32>().prop_map(|v| (DataType::U32, i128::from(v))),
            any::<i32>().prop_map(|v| (DataType::I32, i128::from(v))),
            (0..1i64 << 40).prop_map(|v| (DataType::U64, i128::from(v))),
            (-(1i64 << 40)..1i64 << 40).prop_map(|v| (DataType::I64, i128::from(v))),
        ],
        order in word_order(),
        scale in prop::sample::select(vec![0.001, 0.01, 0.1, 1.0, 10.0, 100.0]),
        unit in prop::sample::select(vec![
            Unit::Wh, Unit::KWh, Unit::MWh, Unit::W, Unit::KW, Unit::V, Unit::KV,
            Unit::A, Unit::MA, Unit::Hz,
        ]),
    ) {
        let r = Register { scale, unit, ..register(data_type, order) };
        let words = words_of(raw, data_type, order);
        let value = r.decode(&words).unwrap();
        let step = scale * unit.canonical().1;
        prop_assert!((value - raw as f64 * step).abs() <= (raw as f64 * step).abs() * 1e-12);
        prop_assert_eq!(r.encode(value), words);
    }
}
