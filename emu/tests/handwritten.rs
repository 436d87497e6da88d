//! Small hand-written PTX kernels exercising the interpreter directly.

use std::sync::Arc;

use cuwire_emu::*;

const BASE: u64 = 0x7000_0000_0000;

fn mem() -> Arc<DeviceMemory> {
    Arc::new(DeviceMemory::new(BASE, 1 << 30))
}

fn cfg(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig { grid: [grid, 1, 1], block: [block, 1, 1], shared_mem_bytes: 0 }
}

pub const SAXPY: &str = r#"
.version 8.0
.target sm_80
.address_size 64

.visible .entry saxpy(
	.param .u32 saxpy_param_0,
	.param .f32 saxpy_param_1,
	.param .u64 saxpy_param_2,
	.param .u64 saxpy_param_3
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<6>;
	.reg .f32 	%f<5>;
	.reg .b64 	%rd<8>;

	ld.param.u32 	%r2, [saxpy_param_0];
	ld.param.f32 	%f1, [saxpy_param_1];
	ld.param.u64 	%rd1, [saxpy_param_2];
	ld.param.u64 	%rd2, [saxpy_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.s32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;
	cvta.to.global.u64 	%rd3, %rd1;
	mul.wide.s32 	%rd4, %r1, 4;
	add.s64 	%rd5, %rd3, %rd4;
	ld.global.f32 	%f2, [%rd5];
	cvta.to.global.u64 	%rd6, %rd2;
	add.s64 	%rd7, %rd6, %rd4;
	ld.global.f32 	%f3, [%rd7];
	fma.rn.f32 	%f4, %f2, %f1, %f3;
	st.global.f32 	[%rd7], %f4;
$L__BB0_2:
	ret;
}
"#;

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_f32(m: &DeviceMemory, p: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; n * 4];
    m.read(p, &mut b).unwrap();
    b.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn saxpy_params_and_run() {
    let m = mem();
    let module = Module::load(SAXPY.as_bytes(), &m).unwrap();
    assert_eq!(module.kernel_names(), vec!["saxpy".to_string()]);
    let k = module.kernel("saxpy").unwrap();
    assert_eq!(
        k.params,
        vec![
            ParamInfo { offset: 0, size: 4, align: 4 },
            ParamInfo { offset: 4, size: 4, align: 4 },
            ParamInfo { offset: 8, size: 8, align: 8 },
            ParamInfo { offset: 16, size: 8, align: 8 },
        ]
    );
    let n = 1000usize;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let y: Vec<f32> = (0..n).map(|i| 2.0 * i as f32 + 1.0).collect();
    let px = m.alloc(4 * n as u64).unwrap();
    let py = m.alloc(4 * n as u64).unwrap();
    m.write(px, &f32s(&x)).unwrap();
    m.write(py, &f32s(&y)).unwrap();
    let mut params = Vec::new();
    params.extend_from_slice(&(n as u32).to_le_bytes());
    params.extend_from_slice(&3.0f32.to_le_bytes());
    params.extend_from_slice(&px.to_le_bytes());
    params.extend_from_slice(&py.to_le_bytes());
    for workers in [1, 2] {
        m.write(py, &f32s(&y)).unwrap();
        let opts = ExecOptions { worker_threads: workers, ..Default::default() };
        launch(&module, "saxpy", &cfg(8, 128), &params, &m, &opts).unwrap();
        let out = read_f32(&m, py, n);
        for i in 0..n {
            assert_eq!(out[i], 3.0f32.mul_add(x[i], y[i]), "at {i}");
        }
    }
}

#[test]
fn public_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<DeviceMemory>();
    send_sync::<Module>();
    send_sync::<KernelInfo>();
    send_sync::<EmuError>();
    send_sync::<LaunchOutput>();
    send_sync::<ExecOptions>();
}
