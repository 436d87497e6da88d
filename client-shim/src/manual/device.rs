//! Device queries: answered from the welcome, which carries every attribute of every device
//! the tenant sees; an attribute the welcome lacks is asked of the server once and cached.

use super::*;
use crate::{client, expect_reply, export, ffi};
use bytes::Bytes;
use cuwire_protocol::{calls, cuda, CallKind, CuError, Request};

export! {
    fn cuDeviceGetCount(count: *mut c_int) {
        let c = client::get()?;
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(count, c.devices.len() as c_int) }
    }
}

export! {
    fn cuDeviceGet(device: *mut c_int, ordinal: c_int) {
        let c = client::get()?;
        c.device(ordinal)?;
        // SAFETY: CUdevice* out-parameter.
        unsafe { ffi::write(device, ordinal) }
    }
}

export! {
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) {
        let d = client::get()?.device(dev)?;
        // SAFETY: char buffer of len bytes.
        unsafe { ffi::write_cstr(name, len, &d.info.name) }
    }
}

export! {
    fn cuDeviceGetUuid_v2 | cuDeviceGetUuid (uuid: *mut [u8; 16], dev: c_int) {
        let d = client::get()?.device(dev)?;
        // SAFETY: CUuuid* out-parameter (16 bytes).
        unsafe { ffi::write(uuid, d.info.uuid) }
    }
}

export! {
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) {
        let d = client::get()?.device(dev)?;
        // SAFETY: size_t* out-parameter.
        unsafe { ffi::write(bytes, d.info.total_mem as usize) }
    }
}

/// Looks an attribute up in the cache, asking the server on a miss.
pub fn attribute(dev: c_int, attrib: c_int) -> Result<c_int, CuError> {
    let c = client::get()?;
    let d = c.device(dev)?;
    // What the shim decides, whatever the pool's GPU could do: mapped host memory is refused
    // (a remote GPU cannot reach this process's memory); memory pools are the session's, with
    // no shareable handles.
    match attrib {
        cuda::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY | cuda::CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES => return Ok(0),
        cuda::CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED => return Ok(1),
        _ => {}
    }
    if let Some(v) = d.attributes.get(&attrib) {
        return Ok(*v);
    }
    // Not in the welcome (an attribute newer than the server's list): ask once.
    static EXTRA: std::sync::Mutex<Option<std::collections::HashMap<(c_int, c_int), c_int>>> = std::sync::Mutex::new(None);
    if let Some(v) = EXTRA.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Default::default).get(&(dev, attrib)) {
        return Ok(*v);
    }
    let req = calls::cuDeviceGetAttribute::Req { pi: (), attrib, dev };
    let (reply, _) = c.call(CallKind::Sync, Request::cuDeviceGetAttribute(req), Bytes::new())?;
    let v = expect_reply!(reply, cuDeviceGetAttribute)?.pi;
    EXTRA.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Default::default).insert((dev, attrib), v);
    Ok(v)
}

export! {
    fn cuDeviceGetAttribute(pi: *mut c_int, attrib: c_int, dev: c_int) {
        if pi.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let v = attribute(dev, attrib)?;
        // SAFETY: int* out-parameter.
        unsafe { ffi::write(pi, v) }
    }
}

export! {
    fn cuDeviceComputeCapability(major: *mut c_int, minor: *mut c_int, dev: c_int) {
        let ma = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let mi = attribute(dev, cuda::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        // SAFETY: int* out-parameters.
        unsafe {
            ffi::write(major, ma)?;
            ffi::write(minor, mi)
        }
    }
}

export! {
    fn cuDeviceGetPCIBusId(bus_id: *mut c_char, len: c_int, dev: c_int) {
        let d = client::get()?.device(dev)?;
        // SAFETY: char buffer of len bytes.
        unsafe { ffi::write_cstr(bus_id, len, &d.info.pci_bus_id) }
    }
}

export! {
    fn cuDeviceGetByPCIBusId(dev: *mut c_int, bus_id: *const c_char) {
        // SAFETY: NUL-terminated string argument.
        let wanted = unsafe { ffi::cstr(bus_id)? }.to_ascii_lowercase();
        let c = client::get()?;
        let i = c
            .devices
            .iter()
            .position(|d| d.info.pci_bus_id.to_ascii_lowercase() == wanted || d.info.pci_bus_id.to_ascii_lowercase().ends_with(&wanted))
            .ok_or(CuError::INVALID_DEVICE)?;
        // SAFETY: CUdevice* out-parameter.
        unsafe { ffi::write(dev, i as c_int) }
    }
}
