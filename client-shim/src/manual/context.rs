//! Contexts: minted here (no round trip), kept on the per-thread stack here, created on the
//! server by a fire-and-forget call that precedes every use of them on the lane.

use super::*;
use crate::client::{self, CtxInfo};
use crate::{context, export, export_tables, ffi};
use bytes::Bytes;
use cuwire_protocol::{calls, Ctx, CuError, Request};

fn create(flags: c_uint, dev: c_int) -> Result<Ctx, CuError> {
    let c = client::get()?;
    c.device(dev)?;
    let ctx = Ctx(c.mint());
    c.objects().contexts.insert(ctx.0, CtxInfo { device: dev, flags, primary: false });
    c.send(Request::CtxCreate(calls::CtxCreate::Req { ctx, flags, dev }), Bytes::new())?;
    context::push(ctx);
    Ok(ctx)
}

/// Creates a context, makes it current and writes its handle (every cuCtxCreate version).
fn create_into(pctx: *mut Handle, flags: c_uint, dev: c_int) -> Result<(), CuError> {
    if pctx.is_null() {
        return Err(CuError::INVALID_VALUE);
    }
    let ctx = create(flags, dev)?;
    // SAFETY: CUcontext* out-parameter, checked non-null.
    unsafe { ffi::write(pctx, ctx.0 as Handle) }
}

export! {
    fn cuCtxCreate_v2 | cuCtxCreate (pctx: *mut Handle, flags: c_uint, dev: c_int) {
        create_into(pctx, flags, dev)
    }
}

export! {
    /// Execution-affinity parameters are not supported; without them this is cuCtxCreate.
    fn cuCtxCreate_v3(pctx: *mut Handle, params: *mut c_void, num_params: c_int, flags: c_uint, dev: c_int) {
        if !params.is_null() && num_params > 0 {
            return Err(CuError::NOT_SUPPORTED);
        }
        create_into(pctx, flags, dev)
    }
}

export! {
    /// Creation parameters (execution affinity, CIG) are not supported; without them this is
    /// cuCtxCreate.
    fn cuCtxCreate_v4(pctx: *mut Handle, params: *mut c_void, flags: c_uint, dev: c_int) {
        if !params.is_null() {
            return Err(CuError::NOT_SUPPORTED);
        }
        create_into(pctx, flags, dev)
    }
}

export! {
    fn cuCtxDestroy_v2 | cuCtxDestroy (ctx: Handle) {
        let c = client::get()?;
        let ctx = Ctx(ctx as u64);
        match c.objects().contexts.get(&ctx.0) {
            Some(info) if !info.primary => {}
            _ => return Err(CuError::INVALID_CONTEXT),
        }
        export_tables::destroy_context_storage(ctx.0);
        c.objects().contexts.remove(&ctx.0);
        context::forget(ctx);
        c.send(Request::CtxDestroy(calls::CtxDestroy::Req { ctx }), Bytes::new())
    }
}

fn known(ctx: Ctx) -> Result<(), CuError> {
    let c = client::get()?;
    if c.objects().contexts.contains_key(&ctx.0) {
        Ok(())
    } else {
        Err(CuError::INVALID_CONTEXT)
    }
}

export! {
    fn cuCtxPushCurrent_v2 | cuCtxPushCurrent (ctx: Handle) {
        let ctx = Ctx(ctx as u64);
        known(ctx)?;
        context::push(ctx);
        Ok(())
    }
}

export! {
    fn cuCtxPopCurrent_v2 | cuCtxPopCurrent (pctx: *mut Handle) {
        client::get()?;
        let ctx = context::pop().ok_or(CuError::INVALID_CONTEXT)?;
        // SAFETY: optional CUcontext* out-parameter.
        unsafe { ffi::write_opt(pctx, ctx.0 as Handle) };
        Ok(())
    }
}

export! {
    fn cuCtxSetCurrent(ctx: Handle) {
        let ctx = Ctx(ctx as u64);
        if !ctx.is_null() {
            known(ctx)?;
        } else {
            client::get()?;
        }
        context::set_current(ctx);
        Ok(())
    }
}

export! {
    fn cuCtxGetCurrent(pctx: *mut Handle) {
        client::get()?;
        // SAFETY: CUcontext* out-parameter.
        unsafe { ffi::write(pctx, context::current().0 as Handle) }
    }
}

export! {
    fn cuCtxGetDevice(device: *mut c_int) {
        let dev = client::get()?.current_device()?;
        // SAFETY: CUdevice* out-parameter.
        unsafe { ffi::write(device, dev) }
    }
}

export! {
    fn cuCtxGetFlags(flags: *mut c_uint) {
        let c = client::get()?;
        let ctx = context::current();
        let f = c.objects().contexts.get(&ctx.0).map(|i| i.flags).ok_or(CuError::INVALID_CONTEXT)?;
        // SAFETY: unsigned int* out-parameter.
        unsafe { ffi::write(flags, f) }
    }
}

export! {
    fn cuCtxGetApiVersion(ctx: Handle, version: *mut c_uint) {
        let ctx = if ctx.is_null() { context::current() } else { Ctx(ctx as u64) };
        known(ctx)?;
        // Every context of this driver is a "v2" (3020) context, as with the real driver.
        // SAFETY: unsigned int* out-parameter.
        unsafe { ffi::write(version, 3020) }
    }
}

// ---- primary contexts

export! {
    fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: c_int) {
        if pctx.is_null() {
            return Err(CuError::INVALID_VALUE);
        }
        let c = client::get()?;
        c.device(dev)?;
        let ctx = {
            let mut objects = c.objects();
            let flags = objects.primary[dev as usize].flags;
            if objects.primary[dev as usize].ctx == 0 {
                let ctx = c.mint();
                objects.primary[dev as usize].ctx = ctx;
                objects.contexts.insert(ctx, CtxInfo { device: dev, flags, primary: true });
            }
            objects.primary[dev as usize].refs += 1;
            Ctx(objects.primary[dev as usize].ctx)
        };
        c.send(Request::PrimaryCtxRetain(calls::PrimaryCtxRetain::Req { ctx, dev }), Bytes::new())?;
        // SAFETY: CUcontext* out-parameter.
        unsafe { ffi::write(pctx, ctx.0 as Handle) }
    }
}

export! {
    fn cuDevicePrimaryCtxRelease_v2 | cuDevicePrimaryCtxRelease (dev: c_int) {
        let c = client::get()?;
        c.device(dev)?;
        let gone = {
            let mut objects = c.objects();
            let p = &mut objects.primary[dev as usize];
            if p.refs == 0 {
                return Err(CuError::INVALID_CONTEXT);
            }
            p.refs -= 1;
            (p.refs == 0).then_some(p.ctx)
        };
        if let Some(ctx) = gone {
            // The last reference: the primary context goes away.
            export_tables::destroy_context_storage(ctx);
        }
        c.send(Request::PrimaryCtxRelease(calls::PrimaryCtxRelease::Req { dev }), Bytes::new())
    }
}

export! {
    fn cuDevicePrimaryCtxSetFlags_v2 | cuDevicePrimaryCtxSetFlags (dev: c_int, flags: c_uint) {
        let c = client::get()?;
        c.device(dev)?;
        {
            let mut objects = c.objects();
            objects.primary[dev as usize].flags = flags;
            let ctx = objects.primary[dev as usize].ctx;
            if let Some(info) = objects.contexts.get_mut(&ctx) {
                info.flags = flags;
            }
        }
        c.send(Request::PrimaryCtxSetFlags(calls::PrimaryCtxSetFlags::Req { dev, flags }), Bytes::new())
    }
}

export! {
    fn cuDevicePrimaryCtxGetState(dev: c_int, flags: *mut c_uint, active: *mut c_int) {
        let c = client::get()?;
        c.device(dev)?;
        let p = c.objects().primary[dev as usize];
        // SAFETY: unsigned int* and int* out-parameters.
        unsafe {
            ffi::write(flags, p.flags)?;
            ffi::write(active, (p.refs > 0) as c_int)
        }
    }
}

export! {
    fn cuDevicePrimaryCtxReset_v2 | cuDevicePrimaryCtxReset (dev: c_int) {
        let c = client::get()?;
        c.device(dev)?;
        let ctx = c.objects().primary[dev as usize].ctx;
        if ctx != 0 {
            export_tables::destroy_context_storage(ctx);
        }
        c.objects().primary[dev as usize].refs = 0;
        c.send(Request::PrimaryCtxReset(calls::PrimaryCtxReset::Req { dev }), Bytes::new())
    }
}
