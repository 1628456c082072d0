"""Solutions to lesson 16's exercises. Each block replaces the notebook cell of the same exercise."""

# %% exercise-1
@cuda.jit(device=True)
def scatter_bilinear(dx, b, c, y, x, g):
    """Add g times the bilinear weights of (y, x) into its 4 pixels (as bilinear_dev reads them)."""
    H, W = dx.shape[2], dx.shape[3]
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = H - 1
        y1 = H - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = W - 1
        x1 = W - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    cuda.atomic.add(dx, (b, c, y0, x0), g * hy * hx)   # other threads may write the same pixel
    cuda.atomic.add(dx, (b, c, y0, x1), g * hy * lx)
    cuda.atomic.add(dx, (b, c, y1, x0), g * ly * hx)
    cuda.atomic.add(dx, (b, c, y1, x1), g * ly * lx)


@cuda.jit
def roi_align_backward_kernel(dout, rois, spatial_scale, sampling_ratio, dx):
    i = cuda.grid(1)
    K, C, PH, PW = dout.shape
    if i >= K * C * PH * PW:
        return
    pw = i % PW
    ph = (i // PW) % PH
    c = (i // (PW * PH)) % C
    k = i // (PW * PH * C)
    b = int(rois[k, 0])
    start_w, start_h = rois[k, 1] * spatial_scale, rois[k, 2] * spatial_scale
    roi_w = max(rois[k, 3] * spatial_scale - start_w, 1.0)
    roi_h = max(rois[k, 4] * spatial_scale - start_h, 1.0)
    bin_w, bin_h = roi_w / PW, roi_h / PH
    grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / PH))
    grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / PW))
    g = dout[k, c, ph, pw] / max(grid_h * grid_w, 1)
    for iy in range(grid_h):
        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
        for ix in range(grid_w):
            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
            scatter_bilinear(dx, b, c, y, x, g)


roi_align_backward_kernel_written = True

# %% exercise-2
num_blocks = (512 * 256 * 7 * 7 + 255) // 256   # one thread per output element, 256 per block

# %% exercise-3
answer_3 = "a"
