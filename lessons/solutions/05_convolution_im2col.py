"""Solutions to lesson 05's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
def out_size(H, K, S, P, D):
    # the dilated kernel spans D*(K - 1) + 1 pixels; count the strided positions that fit
    return (H + 2 * P - D * (K - 1) - 1) // S + 1

# %% exercise-2
def col2im_overwrite(cols, x_shape, KH, KW, stride=1, padding=0):
    N, C, H, W = x_shape
    OH = (H + 2 * padding - KH) // stride + 1
    OW = (W + 2 * padding - KW) // stride + 1
    dx_pad = np.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                row = (c * KH + kh) * KW + kw
                for i in range(OH):
                    for j in range(OW):
                        dx_pad[:, c, i * stride + kh, j * stride + kw] = cols[:, row, i * OW + j]  # the bug
    return dx_pad[:, :, padding:padding + H, padding:padding + W]


class BrokenConv2d(MyConv2d):
    @staticmethod
    def backward(ctx, dout):
        x, w = ctx.saved_tensors
        N, C_out, OH, OW = dout.shape
        KH, KW = w.shape[2:]
        cols = im2col_loops(x, KH, KW, ctx.stride, ctx.padding)
        dout_mat = dout.reshape(N, C_out, OH * OW)
        dw = (dout_mat @ cols.transpose(0, 2, 1)).sum(0).reshape(w.shape)
        db = dout.sum(axis=(0, 2, 3))
        dcols = w.reshape(C_out, -1).T @ dout_mat
        dx = col2im_overwrite(dcols, x.shape, KH, KW, ctx.stride, ctx.padding)
        return dx, dw, db

# %% exercise-3
input_mib = 64 * 200 * 304 * 4 / 2**20          # about 14.8 MiB
cols_mib = 64 * 9 * 200 * 304 * 4 / 2**20       # C*KH*KW rows, OH*OW columns: about 134 MiB
