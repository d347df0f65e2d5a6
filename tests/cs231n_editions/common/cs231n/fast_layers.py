# The assignment's fast layers wrap a Cython im2col; this plain-NumPy stand-in keeps their
# structure and caches (conv: (x, w, b, conv_param, x_cols); pool: ('reshape' | 'im2col', cache)).
import numpy as np
from numpy.lib.stride_tricks import as_strided


def conv_forward_strides(x, w, b, conv_param):
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    stride, pad = conv_param['stride'], conv_param['pad']
    x_padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode='constant')
    H += 2 * pad
    W += 2 * pad
    out_h = (H - HH) // stride + 1
    out_w = (W - WW) // stride + 1
    shape = (C, HH, WW, N, out_h, out_w)
    strides = x_padded.itemsize * np.array((H * W, W, 1, C * H * W, stride * W, stride))
    x_cols = np.ascontiguousarray(as_strided(x_padded, shape=shape, strides=strides))
    x_cols.shape = (C * HH * WW, N * out_h * out_w)
    res = w.reshape(F, -1).dot(x_cols) + b.reshape(-1, 1)
    res.shape = (F, N, out_h, out_w)
    out = np.ascontiguousarray(res.transpose(1, 0, 2, 3))
    cache = (x, w, b, conv_param, x_cols)
    return out, cache


def conv_backward_strides(dout, cache):
    x, w, b, conv_param, x_cols = cache
    stride, pad = conv_param['stride'], conv_param['pad']
    N, C, H, W = x.shape
    F, _, HH, WW = w.shape
    _, _, out_h, out_w = dout.shape
    db = np.sum(dout, axis=(0, 2, 3))
    dout_reshaped = dout.transpose(1, 0, 2, 3).reshape(F, -1)
    dw = dout_reshaped.dot(x_cols.T).reshape(w.shape)
    dx_cols = w.reshape(F, -1).T.dot(dout_reshaped)
    dx_cols.shape = (C, HH, WW, N, out_h, out_w)
    dx_padded = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dx_cols.dtype)
    for i in range(HH):
        for j in range(WW):
            dx_padded[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride] += \
                dx_cols[:, i, j].transpose(1, 0, 2, 3)
    dx = dx_padded[:, :, pad:pad + H, pad:pad + W]
    return dx, dw, db


def max_pool_forward_reshape(x, pool_param):
    N, C, H, W = x.shape
    pool_height, pool_width = pool_param['pool_height'], pool_param['pool_width']
    x_reshaped = x.reshape(N, C, H // pool_height, pool_height, W // pool_width, pool_width)
    out = x_reshaped.max(axis=3).max(axis=4)
    cache = (x, x_reshaped, out)
    return out, cache


def max_pool_backward_reshape(dout, cache):
    x, x_reshaped, out = cache
    dx_reshaped = np.zeros_like(x_reshaped)
    out_newaxis = out[:, :, :, np.newaxis, :, np.newaxis]
    mask = (x_reshaped == out_newaxis)
    dout_newaxis = dout[:, :, :, np.newaxis, :, np.newaxis]
    dout_broadcast, _ = np.broadcast_arrays(dout_newaxis, dx_reshaped)
    dx_reshaped[mask] = dout_broadcast[mask]
    dx_reshaped /= np.sum(mask, axis=(3, 5), keepdims=True)
    return dx_reshaped.reshape(x.shape)


def max_pool_forward_fast(x, pool_param):
    N, C, H, W = x.shape
    pool_height, pool_width = pool_param['pool_height'], pool_param['pool_width']
    stride = pool_param['stride']
    same_size = pool_height == pool_width == stride
    tiles = H % pool_height == 0 and W % pool_width == 0
    if not (same_size and tiles):
        raise NotImplementedError('this stand-in has the reshape strategy only')
    out, reshape_cache = max_pool_forward_reshape(x, pool_param)
    return out, ('reshape', reshape_cache)


def max_pool_backward_fast(dout, cache):
    method, real_cache = cache
    return max_pool_backward_reshape(dout, real_cache)


conv_forward_fast = conv_forward_strides
conv_backward_fast = conv_backward_strides
