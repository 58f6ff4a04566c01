//! One typed ex_data slot: a value the library owns (a `Box` or an `Arc`) attached to OpenSSL
//! objects of one kind (`SSL` or `SSL_CTX`), released by OpenSSL's free callback when the
//! object is freed. Used for the cache handle on each `SSL_CTX` (`tls::install`) and the
//! ticket parked on an `SSL` across a HelloRetryRequest (`tls::parked`).
//!
//! The slot's index is registered with OpenSSL on first use, once per process; an index
//! OpenSSL could not make leaves the slot empty for good (every `put` is refused).

use std::ffi::{c_int, c_long, c_void};
use std::marker::PhantomData;
use std::panic::catch_unwind;
use std::sync::{Arc, OnceLock};

use openssl_sys as ossl;
use openssl_sys::{SSL, SSL_CTX};

/// OpenSSL objects that carry ex_data.
pub(crate) trait Carrier {
    /// Register an index whose values `free` releases when an object is freed, and which a
    /// copy of an object (`SSL_dup`) does not inherit.
    ///
    /// # Safety
    /// `free` must release exactly what this index's values are.
    unsafe fn new_index(free: Option<ossl::CRYPTO_EX_free>) -> c_int;
    /// # Safety
    /// `obj` is a live object; `idx` came from `new_index`.
    unsafe fn get(obj: *const Self, idx: c_int) -> *mut c_void;
    /// # Safety
    /// As for `get`; OpenSSL does not free what the slot held before.
    unsafe fn set(obj: *mut Self, idx: c_int, value: *mut c_void) -> c_int;
}

impl Carrier for SSL {
    unsafe fn new_index(free: Option<ossl::CRYPTO_EX_free>) -> c_int {
        // SAFETY: no argument pointers; the free function is the caller's promise.
        unsafe { ossl::SSL_get_ex_new_index(0, std::ptr::null_mut(), None, Some(copy_empty), free) }
    }

    unsafe fn get(obj: *const SSL, idx: c_int) -> *mut c_void {
        // SAFETY: the caller's promise (live SSL, our index).
        unsafe { ossl::SSL_get_ex_data(obj, idx) }
    }

    unsafe fn set(obj: *mut SSL, idx: c_int, value: *mut c_void) -> c_int {
        // SAFETY: the caller's promise (live SSL, our index).
        unsafe { ossl::SSL_set_ex_data(obj, idx, value) }
    }
}

impl Carrier for SSL_CTX {
    unsafe fn new_index(free: Option<ossl::CRYPTO_EX_free>) -> c_int {
        // SAFETY: no argument pointers; the free function is the caller's promise.
        unsafe {
            ossl::SSL_CTX_get_ex_new_index(0, std::ptr::null_mut(), None, Some(copy_empty), free)
        }
    }

    unsafe fn get(obj: *const SSL_CTX, idx: c_int) -> *mut c_void {
        // SAFETY: the caller's promise (live SSL_CTX, our index).
        unsafe { ossl::SSL_CTX_get_ex_data(obj, idx) }
    }

    unsafe fn set(obj: *mut SSL_CTX, idx: c_int, value: *mut c_void) -> c_int {
        // SAFETY: the caller's promise (live SSL_CTX, our index).
        unsafe { ossl::SSL_CTX_set_ex_data(obj, idx, value) }
    }
}

/// Owning pointers a slot can hold: what `into_raw` gives up, `from_raw` takes back.
pub(crate) trait Owner: Sized {
    type Target;
    fn into_raw(self) -> *mut c_void;
    /// # Safety
    /// `p` came from `into_raw` of this type and nobody else owns it any more.
    unsafe fn from_raw(p: *mut c_void) -> Self;
}

impl<T> Owner for Box<T> {
    type Target = T;

    fn into_raw(self) -> *mut c_void {
        Box::into_raw(self) as *mut c_void
    }

    unsafe fn from_raw(p: *mut c_void) -> Box<T> {
        // SAFETY: the caller's promise.
        unsafe { Box::from_raw(p as *mut T) }
    }
}

impl<T> Owner for Arc<T> {
    type Target = T;

    fn into_raw(self) -> *mut c_void {
        Arc::into_raw(self) as *mut c_void
    }

    unsafe fn from_raw(p: *mut c_void) -> Arc<T> {
        // SAFETY: the caller's promise.
        unsafe { Arc::from_raw(p as *const T) }
    }
}

/// An ex_data slot of objects `C` holding a `P` (`Box<T>` or `Arc<T>`) each, owned by the
/// object from `put` until `take` or the object's free. Meant for a `static`.
pub(crate) struct Slot<C, P> {
    index: OnceLock<c_int>,
    _holds: PhantomData<fn() -> (*const C, P)>,
}

impl<C: Carrier, P: Owner> Slot<C, P> {
    pub(crate) const fn new() -> Slot<C, P> {
        Slot {
            index: OnceLock::new(),
            _holds: PhantomData,
        }
    }

    /// The slot's index; `None` if OpenSSL could not make one.
    pub(crate) fn index(&self) -> Option<c_int> {
        // SAFETY: free_value releases exactly the P this slot's values are.
        let idx = *self
            .index
            .get_or_init(|| unsafe { C::new_index(Some(free_value::<P>)) });
        (idx >= 0).then_some(idx)
    }

    /// The value on `obj`, borrowed.
    ///
    /// # Safety
    /// `obj` is live, and the value is neither taken nor replaced while the reference lives
    /// (for an `Arc`, one that lives as long as `obj` does: a caller holds `obj`).
    pub(crate) unsafe fn get<'a>(&self, obj: *const C) -> Option<&'a P::Target> {
        let idx = self.index()?;
        // SAFETY: live object, our index.
        let p = unsafe { C::get(obj, idx) } as *const P::Target;
        // SAFETY: NULL or a P we put there (into_raw points at its target), alive while the
        // caller says it is.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// Put `value` on `obj` and return what was there; `Err(value)` if OpenSSL refused.
    ///
    /// # Safety
    /// `obj` is live, and no reference from [`Slot::get`] on it is in use.
    pub(crate) unsafe fn put(&self, obj: *mut C, value: P) -> Result<Option<P>, P> {
        let Some(idx) = self.index() else {
            return Err(value);
        };
        // SAFETY: live object, our index.
        let old = unsafe { C::get(obj, idx) };
        let new = value.into_raw();
        // SAFETY: as above; the old value stays ours to release (OpenSSL does not free it).
        if unsafe { C::set(obj, idx, new) } != 1 {
            // SAFETY: not stored, so still ours.
            return Err(unsafe { P::from_raw(new) });
        }
        // SAFETY: NULL or a P we put there, whose place the new value took.
        Ok((!old.is_null()).then(|| unsafe { P::from_raw(old) }))
    }

    /// Take the value off `obj` (the caller owns it now).
    ///
    /// # Safety
    /// `obj` is live, and no reference from [`Slot::get`] on it is in use.
    pub(crate) unsafe fn take(&self, obj: *mut C) -> Option<P> {
        let idx = self.index()?;
        // SAFETY: live object, our index.
        let p = unsafe { C::get(obj, idx) };
        if p.is_null() {
            return None;
        }
        // SAFETY: clearing the slot first, so the value has exactly one owner.
        if unsafe { C::set(obj, idx, std::ptr::null_mut()) } != 1 {
            return None;
        }
        // SAFETY: a P we put there, no longer on the object.
        Some(unsafe { P::from_raw(p) })
    }
}

/// OpenSSL's dup callback: a copy of an object starts with the slot empty. Without it OpenSSL
/// copies the pointer, and the original and the copy (`SSL_dup`) would both own, and free, one
/// value: a ticket parked for a HelloRetryRequest was freed twice.
unsafe extern "C" fn copy_empty(
    _to: *mut ossl::CRYPTO_EX_DATA,
    _from: *const ossl::CRYPTO_EX_DATA,
    from_d: *mut *mut c_void,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) -> c_int {
    if !from_d.is_null() {
        // SAFETY: OpenSSL 3 passes the address of the value the copy will hold.
        unsafe { *from_d = std::ptr::null_mut() };
    }
    1
}

/// OpenSSL's free callback for a slot holding `P`: releases what the freed object still held.
unsafe extern "C" fn free_value<P: Owner>(
    _parent: *mut c_void,
    ptr: *mut c_void,
    _ad: *mut ossl::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if !ptr.is_null() {
        // SAFETY: a P a Slot put there; the object is going, so nobody else owns it.
        let _ = catch_unwind(|| drop(unsafe { P::from_raw(ptr) }));
    }
}
