//! Metal compatibility without a Mac: every WGSL kernel, in every weight format, must parse,
//! validate and translate to MSL with naga (the translator wgpu uses on Metal).

#![cfg(feature = "wgpu")]

use flashmoe_backends::wgpu::kernels::Kernel;

#[test]
fn every_kernel_translates_to_msl() {
    let mut failures = Vec::new();
    for kernel in Kernel::all() {
        let name = kernel.name();
        let module = match naga::front::wgsl::parse_str(&kernel.source()) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!("{name}: WGSL parse: {e}"));
                continue;
            }
        };
        let info = match naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!(
                    "{name}: validation (no optional capabilities): {e:?}"
                ));
                continue;
            }
        };
        let entry = module
            .entry_points
            .iter()
            .position(|e| e.name == kernel.entry());
        assert!(entry.is_some(), "{name}: no entry point {}", kernel.entry());
        let options = naga::back::msl::Options {
            lang_version: (2, 1),
            ..Default::default()
        };
        match naga::back::msl::write_string(
            &module,
            &info,
            &options,
            &naga::back::msl::PipelineOptions::default(),
        ) {
            Ok((msl, _)) => assert!(msl.contains("kernel"), "{name}: no kernel in the MSL"),
            Err(e) => failures.push(format!("{name}: MSL: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} kernels translate to MSL 2.1", Kernel::all().len());
}
